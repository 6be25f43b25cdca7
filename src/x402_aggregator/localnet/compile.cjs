// Compile one Solidity file with solcjs (offline) and print every contract it defines as JSON:
// {"Name": {"creation": "0x..", "runtime": "0x.."}}.
// Usage: node compile.cjs FILE [--solc MODULE] [--via-ir] [--runs N] [--root DIR]...
//   --solc   the solcjs package to load (default "solc"; "solc-0.8.17" for Permit2's exact pragma)
//   --root   folders imports are looked up in, in order (a remapping "a/b" also tries DIR/lib/a/b)
// NODE_PATH must reach the project's node_modules.
"use strict";
const fs = require("fs");
const path = require("path");

function parse(argv) {
  const options = { file: argv[0], solc: "solc", viaIR: false, runs: 200, roots: [] };
  for (let i = 1; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--via-ir") options.viaIR = true;
    else if (flag === "--solc") options.solc = argv[++i];
    else if (flag === "--runs") options.runs = Number(argv[++i]);
    else if (flag === "--root") options.roots.push(argv[++i]);
    else throw new Error(`unknown option ${flag}`);
  }
  return options;
}

function importer(roots) {
  return (wanted) => {
    for (const root of roots) {
      for (const candidate of [path.join(root, wanted), path.join(root, "lib", wanted)]) {
        if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, "utf8") };
      }
    }
    return { error: `not found: ${wanted}` };
  };
}

const options = parse(process.argv.slice(2));
const solc = require(options.solc);
const name = path.basename(options.file);
const input = {
  language: "Solidity",
  sources: { [name]: { content: fs.readFileSync(options.file, "utf8") } },
  settings: {
    viaIR: options.viaIR,
    optimizer: { enabled: true, runs: options.runs },
    metadata: { bytecodeHash: "none" },
    outputSelection: { [name]: { "*": ["evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: importer(options.roots) }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const contracts = {};
for (const [contract, artifact] of Object.entries(output.contracts[name])) {
  contracts[contract] = {
    creation: "0x" + artifact.evm.bytecode.object,
    runtime: "0x" + artifact.evm.deployedBytecode.object,
  };
}
process.stdout.write(JSON.stringify(contracts));
