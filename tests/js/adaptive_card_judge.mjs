// Microsoft's own Adaptive Cards library (adaptivecards from npm) as the judge of the cards
// keyturn sends to Teams: each card is parsed as a Teams client would, and every parse or
// validation event, and every property the library drops when it writes the card back
// (an unknown property, a wrong value), is a finding.
//
// In: a JSON array of cards on stdin. Out: {"findings": [...]} on stdout.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";

const AC = createRequire(import.meta.url)("adaptivecards/dist/adaptivecards.js");

const cards = JSON.parse(readFileSync(0, "utf8"));
const findings = [];
cards.forEach((json, n) => {
  const card = new AC.AdaptiveCard();
  const context = new AC.SerializationContext(AC.Versions.v1_5);
  card.parse(json, context);
  for (let i = 0; i < context.eventCount; i++) {
    findings.push(`card ${n}: parse: ${context.getEventAt(i).message}`);
  }
  for (const event of card.validateProperties().validationEvents) {
    findings.push(`card ${n}: validation: ${event.message}`);
  }
  const written = card.toJSON(new AC.SerializationContext(AC.Versions.v1_5));
  if (!isDeepStrictEqual(written, json)) {
    findings.push(`card ${n}: read back as ${JSON.stringify(written)}, not as sent ${JSON.stringify(json)}`);
  }
});
process.stdout.write(JSON.stringify({ findings }));
