// The "New item" form: an optional attachment is uploaded first (POST /api/upload), then
// linked from the description of the item created with it.

import { api, explain } from "../api.js";
import { clearErrors, field, h, showApiError } from "../dom.js";
import { attachmentLine } from "./attachments.js";

export function createForm(onCreated) {
  // The placeholder lets the phone layout show the other fields once a title is typed.
  const title = field(
    "Title",
    h("input", { name: "title", autocomplete: "off", placeholder: "What needs doing?" }),
  );
  const description = field("Description", h("textarea", { name: "description", rows: 3 }));
  const priority = field(
    "Priority",
    h("input", {
      name: "priority",
      type: "number",
      inputmode: "numeric",
      min: 0,
      max: 100,
      value: "0",
    }),
    {
      className: "field narrow extra",
    },
  );
  const file = field("Attachment", h("input", { name: "file", type: "file" }), {
    hint: "Optional; linked from the description.",
  });
  description.wrap.classList.add("extra");
  file.wrap.classList.add("extra");
  const general = h("p", { class: "form-error", role: "alert", hidden: true });
  const add = h("button", { type: "submit", class: "btn primary" }, "Add");
  const fields = { title, description, priority, file };

  const form = h(
    "form",
    { class: "card create", novalidate: true, "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "New item"),
    title.wrap,
    description.wrap,
    file.wrap,
    general,
    h("div", { class: "row end" }, priority.wrap, add),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(fields, general);
    add.disabled = true;
    const body = { title: title.input.value, description: description.input.value };
    // Empty means the default; anything else not a number goes as it is, for the API to name.
    const rawPriority = priority.input.value.trim();
    if (rawPriority) body.priority = /^\d+$/.test(rawPriority) ? Number(rawPriority) : rawPriority;
    try {
      const chosen = file.input.files[0];
      if (chosen) {
        try {
          const uploaded = await api.upload(chosen);
          const line = attachmentLine(chosen.name, uploaded.url);
          body.description = body.description ? `${body.description}\n\n${line}` : line;
        } catch (error) {
          error.fields = { file: [explain(error)] };
          error.general = "";
          throw error;
        }
      }
      const item = await api.create(body);
      form.reset();
      onCreated(item);
      title.input.focus();
    } catch (error) {
      showApiError(error, fields, general, explain);
    } finally {
      add.disabled = false;
    }
  });

  return form;
}
