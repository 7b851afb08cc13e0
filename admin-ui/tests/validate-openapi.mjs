// Checks an OpenAPI document against the OpenAPI 3.x JSON schemas, and that every operation
// reference resolves. Usage: node validate-openapi.mjs FILE. Exit 0 when valid; otherwise the
// errors are printed and the exit code is 1.
import { readFile } from "node:fs/promises";
import { Validator } from "@seriousme/openapi-schema-validator";

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node validate-openapi.mjs FILE");
  process.exit(2);
}
const document = JSON.parse(await readFile(file, "utf8"));
const validator = new Validator();
const result = await validator.validate(document);
if (!result.valid) {
  console.error(JSON.stringify(result.errors, null, 2));
  process.exit(1);
}
const resolved = await validator.resolveRefs();
const operations = Object.values(resolved.paths ?? {}).flatMap((item) => Object.keys(item));
console.log(`valid OpenAPI ${validator.version}: ${operations.length} operations`);
