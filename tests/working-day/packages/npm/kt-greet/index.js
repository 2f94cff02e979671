const { titleCase } = require("kt-strings");

exports.greet = (name) => `Hello, ${titleCase(name) || "Stranger"}!`;
