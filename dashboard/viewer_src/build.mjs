// Copies the pinned OpenSeadragon build (node_modules, installed by `npm ci` from
// package-lock.json) into dashboard/static/viewer/, byte for byte, with its licence and a
// manifest (version, the lock's integrity, sha256 of the copied file) that a unit test checks
// against package-lock.json. Run by `make viewer-assets`; the output is committed, so running
// the dashboard needs no node.
import {createHash} from "node:crypto";
import {copyFileSync, mkdirSync, readFileSync, writeFileSync} from "node:fs";
import {dirname, join} from "node:path";
import {fileURLToPath} from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "viewer");
const pkg = join(here, "node_modules", "openseadragon");
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const locked = lock.packages["node_modules/openseadragon"];
const installed = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
if (installed.version !== locked.version) {
  throw new Error(`node_modules has openseadragon ${installed.version}, the lock pins ` +
    `${locked.version}: run npm ci`);
}

mkdirSync(out, {recursive: true});
const script = join(pkg, "build", "openseadragon", "openseadragon.min.js");
copyFileSync(script, join(out, "openseadragon.min.js"));
copyFileSync(join(pkg, "LICENSE.txt"), join(out, "openseadragon-LICENSE.txt"));
const manifest = {
  package: "openseadragon",
  version: installed.version,
  license: installed.license,
  integrity: locked.integrity,
  file: "build/openseadragon/openseadragon.min.js",
  sha256: createHash("sha256").update(readFileSync(script)).digest("hex"),
};
writeFileSync(join(out, "openseadragon.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`openseadragon ${manifest.version} -> ${out}`);
