// A real x402 facilitator on the official TypeScript SDK (@x402/core + @x402/evm + viem), for the
// local test bed. Plain CommonJS so it runs without a build; modules resolve through NODE_PATH
// because this file lives in src/, not beside node_modules.
//
// Config (env): PORT, RPC_URL, FACILITATOR_PRIVATE_KEY, LIFETIME_S (default 900),
// CONFIRMATION_TIMEOUT_S (default 120), NONCE_MANAGER ("1" default; "0" drops viem's nonce
// manager, a deliberate fault mode: concurrent settles then reuse tx nonces and some fail).
// SVM_RPC_URL + SVM_FEE_PAYER_KEY (base58 64-byte keypair) also register @x402/svm's exact
// scheme on the local Solana cluster, fees paid by that key.
// Prints "ready http://127.0.0.1:PORT" once it accepts connections.
"use strict";

const express = require("express");
const { x402Facilitator } = require("@x402/core/facilitator");
const { PaymentPayloadV1Schema, PaymentPayloadV2Schema, PaymentRequirementsV1Schema,
  PaymentRequirementsV2Schema } = require("@x402/core/schemas");
const { toFacilitatorEvmSigner } = require("@x402/evm");
const { registerExactEvmScheme } = require("@x402/evm/exact/facilitator");
const { UptoEvmScheme } = require("@x402/evm/upto/facilitator");
const { createWalletClient, defineChain, http, publicActions } = require("viem");
const { nonceManager, privateKeyToAccount } = require("viem/accounts");
const { createKeyPairSignerFromBytes, getBase58Encoder } = require("@solana/kit");
const { toFacilitatorSvmSigner } = require("@x402/svm");
const { registerExactSvmScheme } = require("@x402/svm/exact/facilitator");

const HOST = "127.0.0.1";
const CHAIN_ID = 84532;
const NETWORK = "eip155:84532";
const SVM_NETWORK = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"; // the local cluster answers as devnet

function config() {
  const env = process.env;
  const missing = ["PORT", "RPC_URL", "FACILITATOR_PRIVATE_KEY"].filter((name) => !env[name]);
  if (missing.length) {
    console.error(`missing environment: ${missing.join(", ")}`);
    process.exit(2);
  }
  return {
    port: Number(env.PORT),
    rpcUrl: env.RPC_URL,
    privateKey: env.FACILITATOR_PRIVATE_KEY,
    lifetimeS: Number(env.LIFETIME_S || 900),
    confirmationTimeoutS: Number(env.CONFIRMATION_TIMEOUT_S || 120),
    useNonceManager: (env.NONCE_MANAGER ?? "1") !== "0",
    svmRpcUrl: env.SVM_RPC_URL,
    svmFeePayerKey: env.SVM_FEE_PAYER_KEY,
  };
}

async function registerSvm(facilitator, cfg) {
  const bytes = Uint8Array.from(getBase58Encoder().encode(cfg.svmFeePayerKey));
  const keypair = await createKeyPairSignerFromBytes(bytes);
  const signer = toFacilitatorSvmSigner(keypair, { defaultRpcUrl: cfg.svmRpcUrl });
  registerExactSvmScheme(facilitator, { signer, networks: SVM_NETWORK });
}

async function buildFacilitator(cfg) {
  // Base Sepolia's id on a local RPC: v1 payloads naming "base-sepolia" then resolve to this chain.
  const chain = defineChain({
    id: CHAIN_ID,
    name: "x402 test bed",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [cfg.rpcUrl] } },
  });
  const account = privateKeyToAccount(
    cfg.privateKey,
    cfg.useNonceManager ? { nonceManager } : undefined,
  );
  // viem polls receipts every 4 s by default; a local chain answers in milliseconds.
  const client = createWalletClient({
    account, chain, transport: http(cfg.rpcUrl), pollingInterval: 50,
  }).extend(publicActions);
  const signer = toFacilitatorEvmSigner(
    {
      address: account.address,
      getCode: (args) => client.getCode(args),
      readContract: (args) => client.readContract({ ...args, args: args.args || [] }),
      verifyTypedData: (args) => client.verifyTypedData(args),
      writeContract: (args) => client.writeContract({ ...args, args: args.args || [] }),
      sendTransaction: (args) => client.sendTransaction(args),
      waitForTransactionReceipt: (args) => client.waitForTransactionReceipt(args),
    },
    { confirmationTimeoutMs: cfg.confirmationTimeoutS * 1000 },
  );
  const facilitator = new x402Facilitator();
  // Registers v2 on NETWORK and v1 on every legacy EVM name (over-claims, like real deployments).
  // "exact" covers EIP-3009 and Permit2 payloads; "upto" settles Permit2 payments up to a maximum.
  registerExactEvmScheme(facilitator, { signer, networks: NETWORK });
  facilitator.register(NETWORK, new UptoEvmScheme(signer));
  if (cfg.svmRpcUrl && cfg.svmFeePayerKey) await registerSvm(facilitator, cfg);
  return facilitator;
}

function verifyRejection(reason, message, _network) {
  return { isValid: false, invalidReason: reason, invalidMessage: message };
}

function settleRejection(reason, message, network = "") {
  return { success: false, errorReason: reason, errorMessage: message, transaction: "", network };
}

// Validate with the SDK's own schemas (version taken from the payload, as requirements carry none)
// but hand the facilitator the body as sent: zod's parse output drops keys it doesn't model.
function parseRequest(body) {
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    return { error: "body must be a JSON object" };
  }
  const { paymentPayload, paymentRequirements } = body;
  const version = paymentPayload && paymentPayload.x402Version;
  const schemas = {
    1: [PaymentPayloadV1Schema, PaymentRequirementsV1Schema],
    2: [PaymentPayloadV2Schema, PaymentRequirementsV2Schema],
  }[version];
  if (!schemas) return { error: `unsupported or missing paymentPayload.x402Version: ${version}` };
  for (const [schema, value, name] of [[schemas[0], paymentPayload, "paymentPayload"],
    [schemas[1], paymentRequirements, "paymentRequirements"]]) {
    const parsed = schema.safeParse(value);
    if (!parsed.success) return { error: `${name}: ${parsed.error.message}` };
  }
  return { paymentPayload, paymentRequirements };
}

function isUnsupported(error) {
  return error instanceof Error && error.message.startsWith("No facilitator registered");
}

function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

// 200 for every business answer, 400 for requests it cannot take, 500 for thrown errors.
function route(facilitator, operation, reject) {
  return async (req, res) => {
    const request = parseRequest(req.body);
    if (request.error) return res.status(400).json(reject("invalid_payload", request.error, ""));
    const { paymentPayload, paymentRequirements } = request;
    try {
      res.json(await facilitator[operation](paymentPayload, paymentRequirements));
    } catch (error) {
      const network = paymentRequirements.network;
      if (isUnsupported(error)) {
        return res.status(400).json(reject("unsupported_scheme", error.message, network));
      }
      console.error(`${operation} failed:`, error);
      res.status(500).json(reject(`unexpected_${operation}_error`, messageOf(error), network));
    }
  };
}

function createApp(facilitator) {
  const app = express();
  app.use(express.json({ limit: "1mb" }));
  app.post("/verify", route(facilitator, "verify", verifyRejection));
  app.post("/settle", route(facilitator, "settle", settleRejection));
  app.get("/supported", (req, res) => res.json(facilitator.getSupported()));

  // express.json() rejects unparsable bodies before any route runs: answer in x402's shape.
  app.use((error, req, res, next) => {
    if (res.headersSent) return next(error);
    const malformed = error.status >= 400 && error.status < 500;
    const message =
      error.type === "entity.parse.failed" ? "request body is not valid JSON" : messageOf(error);
    const reason = malformed ? "invalid_payload" : "unexpected_error";
    const reject = req.path.endsWith("/settle") ? settleRejection : verifyRejection;
    res.status(malformed ? 400 : 500).json(reject(reason, message, ""));
  });
  return app;
}

async function main() {
  const cfg = config();
  // @x402/evm 2.27 starts its asset eth_getCode check eagerly and drops the promise when verify
  // returns early; with the RPC down that rejection is unhandled and Node would exit. Log it and
  // keep serving: the request itself still gets its answer.
  process.on("unhandledRejection", (reason) => {
    console.error("unhandled rejection (ignored):", messageOf(reason));
  });
  const app = createApp(await buildFacilitator(cfg));
  const server = app.listen(cfg.port, HOST, () => {
    console.log(`ready http://${HOST}:${cfg.port}`);
  });
  server.on("error", (error) => {
    console.error("listen failed:", error.message);
    process.exit(1);
  });
  let closing = false;
  const close = (why) => {
    if (closing) return;
    closing = true;
    console.log(`closing (${why})`);
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    // An in-flight settle may wait on a receipt for the whole confirmation timeout: don't.
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", () => close("SIGTERM"));
  process.on("SIGINT", () => close("SIGINT"));
  setTimeout(() => close("lifetime over"), cfg.lifetimeS * 1000).unref();
}

main().catch((error) => {
  console.error("start-up failed:", messageOf(error));
  process.exit(1);
});
