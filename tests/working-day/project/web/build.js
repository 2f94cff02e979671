const fs = require("node:fs");
const { greet } = require("kt-greet");

fs.mkdirSync("dist", { recursive: true });
const report = { title: "tally weekly", greeting: greet("team") };
fs.writeFileSync("dist/report.json", JSON.stringify(report, null, 2) + "\n");
console.log("wrote dist/report.json");
