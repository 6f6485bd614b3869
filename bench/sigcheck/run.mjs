// Runs bench/sigcheck's module (a WASI command) in Node's V8:
//   node run.mjs sigcheck.wasm <alg> <N> <token> <jwks>
// The module links the whole filter crate, which imports proxy-wasm's host functions and
// exports `_initialize` with its filter; neither is used by the command: the host functions
// are stubs that throw, and only `_start` and the memory are given to WASI.
import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [wasmPath, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['sigcheck', ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(wasmPath));
const outsideEnvoy = () => { throw new Error('a proxy-wasm host call outside Envoy'); };
const imports = { ...wasi.getImportObject(), env: new Proxy({}, { get: () => outsideEnvoy }) };
const instance = await WebAssembly.instantiate(module, imports);
const { memory, _start } = instance.exports;
process.exitCode = wasi.start({ exports: { memory, _start } });
