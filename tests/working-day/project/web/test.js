const assert = require("node:assert");
const { greet } = require("kt-greet");

assert.strictEqual(greet("ada lovelace"), "Hello, Ada Lovelace!");
assert.strictEqual(greet(""), "Hello, Stranger!");
console.log("web tests: 2 passed");
