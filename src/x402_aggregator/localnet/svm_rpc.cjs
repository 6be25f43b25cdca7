// A local Solana cluster for the test bed: litesvm (the real SVM runtime, with the SPL Token,
// Token-2022, Associated Token Account and Memo programs) behind the Solana JSON-RPC methods that
// the x402 SDKs' facilitators and clients call, and that the aggregator's chain reader reads.
//
// What a real cluster does and the tests rely on: a block every SLOT_MS; a blockhash lands
// transactions for 150 blocks, then never; a signature is processed once (a re-sent copy never
// executes twice); a transaction whose instruction fails lands anyway, with its fee and its `err`;
// one that fails before execution (signature, blockhash, fee payer) leaves no trace; statuses go
// processed -> confirmed -> finalized as blocks follow; slots are not block heights.
//
// Env: PORT, SLOT_MS (400), LIFETIME_S (900), SETUP (JSON: airdrops, mints, token accounts).
// Test controls: bed_advanceBlocks [n], bed_pause, bed_resume.
"use strict";

const http = require("node:http");
const { LiteSvm, Account } = require("litesvm/dist/internal");
const kit = require("@solana/kit");

const PORT = Number(process.env.PORT || 8899);
const SLOT_MS = Number(process.env.SLOT_MS || 400);
const LIFETIME_S = Number(process.env.LIFETIME_S || 900);
const SETUP = JSON.parse(process.env.SETUP || "{}");
const GENESIS_HASH = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG"; // devnet's: CAIP-2 matches
const BLOCKHASH_LIFETIME = 150;
const SLOT_OFFSET = 1000; // slot = block height + offset: code mixing them up fails
const FEE_PER_SIGNATURE = 5000;
const MAX_BODY = 4 * 1024 * 1024;
const TOKEN_PROGRAMS = new Set([
  "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
  "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",
]);
// Errors raised before execution: such a transaction is dropped, nothing is recorded.
const PRE_EXECUTION = new Set([
  "AccountInUse", "AccountLoadedTwice", "AccountNotFound", "ProgramAccountNotFound",
  "InsufficientFundsForFee", "InvalidAccountForFee", "AlreadyProcessed", "BlockhashNotFound",
  "MissingSignatureForFee", "InvalidAccountIndex", "SignatureFailure", "SanitizeFailure",
  "UnsupportedVersion", "TooManyAccountLocks", "AddressLookupTableNotFound",
]);
// litesvm's enums, in their declaration order (internal.d.ts).
const TX_ERRORS = ("AccountInUse AccountLoadedTwice AccountNotFound ProgramAccountNotFound " +
  "InsufficientFundsForFee InvalidAccountForFee AlreadyProcessed BlockhashNotFound CallChainTooDeep " +
  "MissingSignatureForFee InvalidAccountIndex SignatureFailure InvalidProgramForExecution " +
  "SanitizeFailure ClusterMaintenance AccountBorrowOutstanding WouldExceedMaxBlockCostLimit " +
  "UnsupportedVersion InvalidWritableAccount WouldExceedMaxAccountCostLimit " +
  "WouldExceedAccountDataBlockLimit TooManyAccountLocks AddressLookupTableNotFound " +
  "InvalidAddressLookupTableOwner InvalidAddressLookupTableData InvalidAddressLookupTableIndex " +
  "InvalidRentPayingAccount WouldExceedMaxVoteCostLimit WouldExceedAccountDataTotalLimit " +
  "MaxLoadedAccountsDataSizeExceeded ResanitizationNeeded InvalidLoadedAccountsDataSizeLimit " +
  "UnbalancedTransaction ProgramCacheHitMaxLimit CommitCancelled").split(" ");
const IX_ERRORS = ("GenericError InvalidArgument InvalidInstructionData InvalidAccountData " +
  "AccountDataTooSmall InsufficientFunds IncorrectProgramId MissingRequiredSignature " +
  "AccountAlreadyInitialized UninitializedAccount UnbalancedInstruction ModifiedProgramId " +
  "ExternalAccountLamportSpend ExternalAccountDataModified ReadonlyLamportChange " +
  "ReadonlyDataModified DuplicateAccountIndex ExecutableModified RentEpochModified " +
  "NotEnoughAccountKeys AccountDataSizeChanged AccountNotExecutable AccountBorrowFailed " +
  "AccountBorrowOutstanding DuplicateAccountOutOfSync InvalidError ExecutableDataModified " +
  "ExecutableLamportChange ExecutableAccountNotRentExempt UnsupportedProgramId CallDepth " +
  "MissingAccount ReentrancyNotAllowed MaxSeedLengthExceeded InvalidSeeds InvalidRealloc " +
  "ComputationalBudgetExceeded PrivilegeEscalation ProgramEnvironmentSetupFailure " +
  "ProgramFailedToComplete ProgramFailedToCompile Immutable IncorrectAuthority " +
  "AccountNotRentExempt InvalidAccountOwner ArithmeticOverflow UnsupportedSysvar IllegalOwner " +
  "MaxAccountsDataAllocationsExceeded MaxAccountsExceeded MaxInstructionTraceLengthExceeded " +
  "BuiltinProgramsMustConsumeComputeUnits").split(" ");

const b58 = { enc: kit.getBase58Encoder(), dec: kit.getBase58Decoder() };
const txDecoder = kit.getTransactionDecoder();
const messageDecoder = kit.getCompiledTransactionMessageDecoder();
const keyBytes = (address) => Uint8Array.from(b58.enc.encode(address));
const keyText = (bytes) => b58.dec.decode(bytes);

class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

// ---- the chain ---------------------------------------------------------------------------
const svm = new LiteSvm();
svm.setBlockhashCheck(false); // our own check: litesvm knows only its latest blockhash
let height = 0;
let paused = false;
const blockhashes = new Map(); // blockhash -> block height it was produced at
const transactions = new Map(); // signature -> landed transaction
const history = new Map(); // address -> signatures, oldest first
let transactionCount = 0;

const slot = () => height + SLOT_OFFSET;
const context = () => ({ apiVersion: "2.2.0", slot: slot() });
const latestBlockhash = () => svm.latestBlockhash();

function produceBlock() {
  height += 1;
  svm.warpToSlot(BigInt(slot()));
  svm.expireBlockhash();
  blockhashes.set(latestBlockhash(), height);
  if (blockhashes.size > 4 * BLOCKHASH_LIFETIME) {
    const oldest = blockhashes.keys().next().value;
    blockhashes.delete(oldest);
  }
}

function blockhashValid(blockhash) {
  const issued = blockhashes.get(blockhash);
  return issued !== undefined && height <= issued + BLOCKHASH_LIFETIME;
}

function commitmentOf(tx) {
  const depth = height - tx.height;
  if (depth >= 2) return "finalized";
  return depth >= 1 ? "confirmed" : "processed";
}

function reaches(tx, commitment) {
  const order = { processed: 0, confirmed: 1, finalized: 2 };
  return order[commitmentOf(tx)] >= order[commitment || "finalized"];
}

// ---- accounts ------------------------------------------------------------------------------
function u64(bytes, offset) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset, true);
}

function account(address) {
  let key;
  try {
    key = keyBytes(address);
  } catch {
    throw new RpcError(-32602, `Invalid param: Invalid ${JSON.stringify(address)}`);
  }
  if (key.length !== 32) throw new RpcError(-32602, "Invalid param: WrongSize");
  return svm.getAccount(key);
}

function tokenAccount(address) {
  const found = account(address);
  if (!found || !TOKEN_PROGRAMS.has(keyText(found.owner())) || found.data().length < 165) {
    return null;
  }
  const data = found.data();
  return { mint: keyText(data.slice(0, 32)), owner: keyText(data.slice(32, 64)), amount: u64(data, 64),
    program: keyText(found.owner()) };
}

function mintInfo(address) {
  const found = account(address);
  if (!found || !TOKEN_PROGRAMS.has(keyText(found.owner()))) return null;
  const data = found.data();
  if (data.length !== 82) return null;
  return { decimals: data[44], supply: u64(data, 36), program: keyText(found.owner()),
    authority: data[0] ? keyText(data.slice(4, 36)) : null };
}

function uiAmount(amount, decimals) {
  const text = amount.toString().padStart(decimals + 1, "0");
  const whole = text.slice(0, text.length - decimals);
  const fraction = text.slice(text.length - decimals).replace(/0+$/, "");
  return { amount: amount.toString(), decimals, uiAmount: Number(amount) / 10 ** decimals,
    uiAmountString: fraction ? `${whole}.${fraction}` : whole };
}

function parsed(address, found) {
  const owner = keyText(found.owner());
  if (!TOKEN_PROGRAMS.has(owner)) return null;
  const program = owner.startsWith("Tokenz") ? "spl-token-2022" : "spl-token";
  const mint = mintInfo(address);
  if (mint) {
    return { program, space: 82, parsed: { type: "mint", info: {
      decimals: mint.decimals, freezeAuthority: null, isInitialized: true,
      mintAuthority: mint.authority, supply: mint.supply.toString() } } };
  }
  const token = tokenAccount(address);
  if (!token) return null;
  const decimals = (mintInfo(token.mint) || { decimals: 0 }).decimals;
  return { program, space: 165, parsed: { type: "account", info: {
    isNative: false, mint: token.mint, owner: token.owner, state: "initialized",
    tokenAmount: uiAmount(token.amount, decimals) } } };
}

function encodeAccount(address, encoding) {
  const found = account(address);
  if (!found) return null;
  const data = found.data();
  let encoded = [Buffer.from(data).toString("base64"), "base64"];
  if (encoding === "jsonParsed") encoded = parsed(address, found) || encoded;
  else if (encoding === "base58") encoded = [keyText(data), "base58"];
  return { data: encoded, executable: found.executable(), lamports: Number(found.lamports()),
    owner: keyText(found.owner()), rentEpoch: 0, space: data.length };
}

function tokenBalances(keys) {
  const balances = [];
  keys.forEach((address, accountIndex) => {
    const token = tokenAccount(address);
    if (!token) return;
    const decimals = (mintInfo(token.mint) || { decimals: 0 }).decimals;
    balances.push({ accountIndex, mint: token.mint, owner: token.owner, programId: token.program,
      uiTokenAmount: uiAmount(token.amount, decimals) });
  });
  return balances;
}

// ---- transactions ----------------------------------------------------------------------------
function decodeTransaction(encoded, encoding) {
  if (typeof encoded !== "string") throw new RpcError(-32602, "invalid transaction: not a string");
  let bytes;
  try {
    bytes = encoding === "base64" ? Buffer.from(encoded, "base64") : Buffer.from(b58.enc.encode(encoded));
    const tx = txDecoder.decode(bytes);
    const message = messageDecoder.decode(tx.messageBytes);
    const keys = message.staticAccounts.map(String);
    const signatures = keys.slice(0, message.header.numSignerAccounts).map((key) => tx.signatures[key]);
    return { bytes: Uint8Array.from(bytes), message, keys, signatures,
      version: message.version, blockhash: message.lifetimeToken };
  } catch (error) {
    throw new RpcError(-32602, `invalid transaction: ${error.message}`);
  }
}

function signatureOf(decoded) {
  const first = decoded.signatures[0];
  return first ? keyText(first) : keyText(new Uint8Array(64));
}

function errorJson(err) {
  if (err === undefined || err === null) return null;
  if (typeof err === "number") return TX_ERRORS[err] || `TransactionError${err}`;
  if (typeof err.index === "number" && typeof err.err === "function") {
    const inner = err.err();
    let detail;
    if (typeof inner === "number") detail = IX_ERRORS[inner] || "GenericError";
    else if (inner && typeof inner.code === "number") detail = { Custom: inner.code };
    else detail = { BorshIoError: String(inner) };
    return { InstructionError: [err.index, detail] };
  }
  if (typeof err.accountIndex === "number") return { InsufficientFundsForRent: { account_index: err.accountIndex } };
  return String(err);
}

function execute(decoded, simulate, sigVerify) {
  svm.setSigverify(sigVerify);
  try {
    const run = decoded.version === "legacy"
      ? (simulate ? svm.simulateLegacyTransaction : svm.sendLegacyTransaction)
      : (simulate ? svm.simulateVersionedTransaction : svm.sendVersionedTransaction);
    const result = run.call(svm, decoded.bytes);
    const failed = typeof result.err === "function";
    const meta = typeof result.meta === "function" ? result.meta() : result;
    return { err: failed ? errorJson(result.err()) : null, logs: meta.logs(),
      units: Number(meta.computeUnitsConsumed()) };
  } finally {
    svm.setSigverify(true);
  }
}

function preflight(decoded, sigVerify, replaceBlockhash) {
  if (transactions.has(signatureOf(decoded))) return { err: "AlreadyProcessed", logs: [], units: 0 };
  if (!replaceBlockhash && !blockhashValid(decoded.blockhash)) {
    return { err: "BlockhashNotFound", logs: [], units: 0 };
  }
  return execute(decoded, true, sigVerify);
}

function land(decoded) {
  const signature = signatureOf(decoded);
  if (transactions.has(signature) || !blockhashValid(decoded.blockhash)) return signature;
  const preBalances = decoded.keys.map((key) => Number((account(key) || { lamports: () => 0n }).lamports()));
  const preTokenBalances = tokenBalances(decoded.keys);
  const result = execute(decoded, false, true);
  const errName = typeof result.err === "string" ? result.err : null;
  if (errName && PRE_EXECUTION.has(errName)) return signature; // dropped, like a real leader does
  transactionCount += 1;
  transactions.set(signature, { ...decoded, signature, height, slot: slot(), err: result.err,
    logs: result.logs, units: result.units, blockTime: Math.floor(Date.now() / 1000),
    fee: FEE_PER_SIGNATURE * decoded.signatures.length, preBalances, preTokenBalances,
    postBalances: decoded.keys.map((key) => Number((account(key) || { lamports: () => 0n }).lamports())),
    postTokenBalances: tokenBalances(decoded.keys) });
  for (const key of new Set(decoded.keys)) {
    if (!history.has(key)) history.set(key, []);
    history.get(key).push(signature);
  }
  return signature;
}

function statusOf(tx) {
  const confirmationStatus = commitmentOf(tx);
  return { slot: tx.slot, confirmations: confirmationStatus === "finalized" ? null : height - tx.height,
    err: tx.err, status: tx.err ? { Err: tx.err } : { Ok: null }, confirmationStatus };
}

function transactionJson(tx, encoding) {
  const instructions = tx.message.instructions.map((ix) => ({
    programIdIndex: ix.programAddressIndex, accounts: Array.from(ix.accountIndices || []),
    data: keyText(ix.data || new Uint8Array()), stackHeight: null }));
  const header = tx.message.header;
  const meta = { err: tx.err, status: tx.err ? { Err: tx.err } : { Ok: null }, fee: tx.fee,
    preBalances: tx.preBalances, postBalances: tx.postBalances, innerInstructions: [],
    preTokenBalances: tx.preTokenBalances, postTokenBalances: tx.postTokenBalances,
    logMessages: tx.logs, rewards: [], loadedAddresses: { writable: [], readonly: [] },
    computeUnitsConsumed: tx.units };
  let transaction;
  if (encoding === "base64" || encoding === "base58") {
    const bytes = Buffer.from(tx.bytes);
    transaction = [encoding === "base64" ? bytes.toString("base64") : keyText(bytes), encoding];
  } else {
    transaction = { signatures: tx.signatures.map((s) => (s ? keyText(s) : keyText(new Uint8Array(64)))),
      message: { accountKeys: tx.keys, header: { numRequiredSignatures: header.numSignerAccounts,
        numReadonlySignedAccounts: header.numReadonlySignerAccounts,
        numReadonlyUnsignedAccounts: header.numReadonlyNonSignerAccounts },
        recentBlockhash: tx.blockhash, instructions, addressTableLookups: [] } };
  }
  return { slot: tx.slot, blockTime: tx.blockTime, meta, transaction,
    version: tx.version === "legacy" ? "legacy" : tx.version };
}

// ---- set-up --------------------------------------------------------------------------------
function setTokenAccount(address, data, program) {
  const lamports = svm.minimumBalanceForRentExemption(BigInt(data.length));
  svm.setAccount(keyBytes(address), new Account(lamports, data, keyBytes(program), false, 0n));
}

function setup(state) {
  for (const [address, lamports] of state.airdrops || []) svm.airdrop(keyBytes(address), BigInt(lamports));
  for (const mint of state.mints || []) {
    const data = new Uint8Array(82);
    data[0] = 1;
    data.set(keyBytes(mint.authority), 4);
    new DataView(data.buffer).setBigUint64(36, BigInt(mint.supply || 0), true);
    data[44] = mint.decimals;
    data[45] = 1;
    setTokenAccount(mint.address, data, mint.program);
  }
  for (const token of state.tokenAccounts || []) {
    const data = new Uint8Array(165);
    data.set(keyBytes(token.mint), 0);
    data.set(keyBytes(token.owner), 32);
    new DataView(data.buffer).setBigUint64(64, BigInt(token.amount || 0), true);
    data[108] = 1; // AccountState::Initialized
    setTokenAccount(token.address, data, token.program);
  }
}

// ---- methods -------------------------------------------------------------------------------
const opts = (params, index) => (params && typeof params[index] === "object" && params[index]) || {};
const withContext = (value) => ({ context: context(), value });

function simulateResult(result) {
  return withContext({ err: result.err, logs: result.logs, accounts: null,
    unitsConsumed: result.units, returnData: null, innerInstructions: [] });
}

const METHODS = {
  getHealth: () => "ok",
  getVersion: () => ({ "solana-core": "2.2.0", "feature-set": 3294202862 }),
  getGenesisHash: () => GENESIS_HASH,
  getIdentity: () => ({ identity: "11111111111111111111111111111111" }),
  getSlot: () => slot(),
  getBlockHeight: () => height,
  getTransactionCount: () => transactionCount,
  getEpochInfo: () => ({ absoluteSlot: slot(), blockHeight: height, epoch: 0, slotIndex: slot(),
    slotsInEpoch: 432000, transactionCount }),
  getLatestBlockhash: () => withContext({ blockhash: latestBlockhash(),
    lastValidBlockHeight: height + BLOCKHASH_LIFETIME }),
  isBlockhashValid: (p) => withContext(blockhashValid(p[0])),
  getFeeForMessage: (p) => {
    const bytes = Buffer.from(String(p[0]), "base64");
    return withContext(bytes.length ? FEE_PER_SIGNATURE * Math.max(1, bytes[bytes[0] & 0x80 ? 1 : 0]) : null);
  },
  getMinimumBalanceForRentExemption: (p) => Number(svm.minimumBalanceForRentExemption(BigInt(p[0] || 0))),
  getRecentPrioritizationFees: () => [],
  getBalance: (p) => withContext(Number((account(p[0]) || { lamports: () => 0n }).lamports())),
  getAccountInfo: (p) => withContext(encodeAccount(p[0], opts(p, 1).encoding || "base58")),
  getMultipleAccounts: (p) => withContext((p[0] || []).map((a) => encodeAccount(a, opts(p, 1).encoding || "base64"))),
  getTokenAccountBalance: (p) => {
    const token = tokenAccount(p[0]);
    if (!token) throw new RpcError(-32602, "Invalid param: could not find account");
    return withContext(uiAmount(token.amount, (mintInfo(token.mint) || { decimals: 0 }).decimals));
  },
  getTokenSupply: (p) => {
    const mint = mintInfo(p[0]);
    if (!mint) throw new RpcError(-32602, "Invalid param: not a Token mint");
    return withContext(uiAmount(mint.supply, mint.decimals));
  },
  requestAirdrop: (p) => {
    const result = svm.airdrop(keyBytes(p[0]), BigInt(p[1]));
    const meta = typeof result.meta === "function" ? result.meta() : result;
    return keyText(meta.signature());
  },
  simulateTransaction: (p) => {
    const options = opts(p, 1);
    const decoded = decodeTransaction(p[0], options.encoding || "base58");
    return simulateResult(preflight(decoded, options.sigVerify === true, options.replaceRecentBlockhash === true));
  },
  sendTransaction: (p) => {
    const options = opts(p, 1);
    const decoded = decodeTransaction(p[0], options.encoding || "base58");
    if (!decoded.signatures[0] || decoded.signatures.some((s) => !s)) {
      throw new RpcError(-32003, "Transaction signature verification failure");
    }
    if (!options.skipPreflight) {
      const result = preflight(decoded, true, false);
      if (result.err) {
        throw new RpcError(-32002, `Transaction simulation failed: ${JSON.stringify(result.err)}`,
          { err: result.err, logs: result.logs, accounts: null, unitsConsumed: result.units, returnData: null });
      }
    }
    return land(decoded);
  },
  getSignatureStatuses: (p) => withContext((p[0] || []).map((signature) => {
    const tx = transactions.get(signature);
    return tx ? statusOf(tx) : null;
  })),
  getTransaction: (p) => {
    const tx = transactions.get(p[0]);
    const options = typeof p[1] === "string" ? { encoding: p[1] } : opts(p, 1);
    if (!tx || !reaches(tx, options.commitment)) return null;
    return transactionJson(tx, options.encoding || "json");
  },
  getSignaturesForAddress: (p) => {
    const options = opts(p, 1);
    account(p[0]); // validates the address
    const limit = Math.min(Math.max(Number(options.limit || 1000), 1), 1000);
    const newestFirst = [...(history.get(p[0]) || [])].reverse()
      .filter((signature) => reaches(transactions.get(signature), options.commitment || "finalized"));
    let start = 0;
    if (options.before) start = Math.max(0, newestFirst.indexOf(options.before) + 1);
    const page = [];
    for (const signature of newestFirst.slice(start)) {
      if (signature === options.until || page.length >= limit) break;
      const tx = transactions.get(signature);
      page.push({ signature, slot: tx.slot, err: tx.err, memo: null, blockTime: tx.blockTime,
        confirmationStatus: commitmentOf(tx) });
    }
    return page;
  },
  bed_advanceBlocks: (p) => {
    const count = Math.min(Number((p && p[0]) || 1), 10000);
    for (let i = 0; i < count; i += 1) produceBlock();
    return height;
  },
  bed_pause: () => { paused = true; return height; },
  bed_resume: () => { paused = false; return height; },
};

function call(request) {
  const id = request && Object.prototype.hasOwnProperty.call(request, "id") ? request.id : null;
  if (!request || typeof request !== "object" || request.jsonrpc !== "2.0" || typeof request.method !== "string") {
    return { jsonrpc: "2.0", id, error: { code: -32600, message: "Invalid request" } };
  }
  const method = Object.prototype.hasOwnProperty.call(METHODS, request.method) ? METHODS[request.method] : null;
  if (!method) return { jsonrpc: "2.0", id, error: { code: -32601, message: "Method not found" } };
  const params = request.params === undefined ? [] : request.params;
  if (!Array.isArray(params)) {
    return { jsonrpc: "2.0", id, error: { code: -32602, message: "Invalid params: expected an array" } };
  }
  try {
    return { jsonrpc: "2.0", id, result: method(params) };
  } catch (error) {
    if (error instanceof RpcError) {
      const body = { code: error.code, message: error.message };
      if (error.data !== undefined) body.data = error.data;
      return { jsonrpc: "2.0", id, error: body };
    }
    return { jsonrpc: "2.0", id, error: { code: -32602, message: `Invalid params: ${error.message}` } };
  }
}

function answer(response, status, body) {
  const text = JSON.stringify(body, (_, value) => (typeof value === "bigint" ? Number(value) : value));
  response.writeHead(status, { "Content-Type": "application/json" });
  response.end(text);
}

const server = http.createServer((request, response) => {
  if (request.method === "GET" && request.url === "/health") {
    response.writeHead(200, { "Content-Type": "text/plain" });
    response.end("ok");
    return;
  }
  if (request.method !== "POST") {
    answer(response, 405, { jsonrpc: "2.0", id: null, error: { code: -32600, message: "POST only" } });
    return;
  }
  const chunks = [];
  let size = 0;
  request.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) request.destroy();
    else chunks.push(chunk);
  });
  request.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      answer(response, 200, { jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } });
      return;
    }
    if (Array.isArray(body)) {
      if (!body.length) answer(response, 200, { jsonrpc: "2.0", id: null, error: { code: -32600, message: "Empty batch" } });
      else answer(response, 200, body.map(call));
    } else {
      answer(response, 200, call(body));
    }
  });
});

setup(SETUP);
produceBlock();
const ticker = setInterval(() => { if (!paused) produceBlock(); }, SLOT_MS);
server.keepAliveTimeout = 30000;
server.listen(PORT, "127.0.0.1", () => {
  console.log(`ready http://127.0.0.1:${server.address().port}`);
});
setTimeout(() => {
  clearInterval(ticker);
  server.close();
  process.exit(0);
}, LIFETIME_S * 1000).unref();
