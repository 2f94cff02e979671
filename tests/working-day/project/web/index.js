const { greet } = require("kt-greet");

const names = process.argv.slice(2);
for (const name of names.length ? names : ["reader"]) {
  console.log(greet(name));
}
