// Compile one Solidity file with solcjs (offline) and print its runtime bytecode as hex.
// Usage: node compile.cjs FILE CONTRACT   (NODE_PATH must reach the project's node_modules)
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const [file, contract] = process.argv.slice(2);
const input = {
  language: "Solidity",
  sources: { [path.basename(file)]: { content: fs.readFileSync(file, "utf8") } },
  settings: { optimizer: { enabled: true, runs: 200 }, outputSelection: { "*": { "*": ["evm.deployedBytecode.object"] } } },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
process.stdout.write("0x" + output.contracts[path.basename(file)][contract].evm.deployedBytecode.object);
