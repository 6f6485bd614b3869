// Runs a wasm32-wasip1 program in Node's V8, the engine Envoy runs the filter in: the cargo
// runner for `cargo test --target wasm32-wasip1` (.cargo/config.toml), which scripts/test runs
// for the SIMD code the native tests never reach. Usage: node scripts/wasi-run.mjs program.wasm
// [args...]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [program, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [program, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(program));
// The library's Envoy host calls (proxy_*) are imported too; a unit test must not reach one.
const imports = wasi.getImportObject();
for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
  if (kind !== "function" || from in imports && from.startsWith("wasi_")) continue;
  imports[from] ??= {};
  imports[from][name] = () => {
    throw new Error(`${from}.${name} is a host call: not available in a unit test`);
  };
}
const instance = await WebAssembly.instantiate(module, imports);
// The SDK exports `_initialize` (a reactor's entry) beside the test harness's `_start`; Node
// refuses a module with both, so it is shown only what a command needs.
const { memory, _start } = instance.exports;
process.exitCode = wasi.start({ exports: { memory, _start } });
