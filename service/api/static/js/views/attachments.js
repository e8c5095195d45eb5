// Attachments live in an item's description as `📎 [name](/uploads/<stored name>)`: the API
// has no attachment field, and the link stays readable for every client that shows the text.

import { h } from "../dom.js";

const LINK = /📎 \[([^\]\n]{1,200})\]\((\/uploads\/[0-9a-f]{32}(?:\.[a-z0-9]{1,10})?)\)/gu;

export function attachmentLine(name, url) {
  const clean = name.replace(/[[\]()\n\r]/g, "").slice(0, 200) || "file";
  return `📎 [${clean}](${url})`;
}

// The description's own text, and its attachments as links to show beside it.
export function describe(description) {
  const links = [];
  const text = description.replace(LINK, (_, name, url) => {
    links.push(h("a", { class: "attachment", href: url, target: "_blank", rel: "noopener" }, name));
    return "";
  });
  return { text: text.trim(), links };
}
