// nbtune key capture: a focusable area that forwards chosen key presses to Python as custom messages.
// Only keys listed in the model's `capture_keys` trait are sent (and kept from JupyterLab's shortcuts); everything
// else passes through untouched. Text is set with textContent only: nothing here is parsed as HTML.

function render({ model, el }) {
  const area = document.createElement("div");
  area.className = "nbtune-keys-area";
  area.tabIndex = 0;
  area.setAttribute("role", "application");
  area.setAttribute("aria-label", "keyboard shortcuts for labelling");
  // Lumino skips shortcut matching for targets inside this attribute (e.g. "1" = Markdown heading).
  area.setAttribute("data-lm-suppress-shortcuts", "true");
  let sent = 0;

  const show = () => {
    const active = document.activeElement === area;
    area.classList.toggle("nbtune-keys-active", active);
    area.textContent = (active ? "Keys on: " : "Click here to use the keyboard: ") + (model.get("hint") || "");
    area.dataset.sent = String(sent);
  };

  const onKeydown = (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const keys = model.get("capture_keys") || [];
    if (!keys.includes(event.key)) return;
    event.preventDefault();
    event.stopPropagation();
    if (event.repeat) return; // holding a key down must not label a run of items
    sent += 1;
    model.send({ event: "key", key: event.key });
    show();
  };

  area.addEventListener("keydown", onKeydown);
  area.addEventListener("click", () => area.focus());
  area.addEventListener("focus", show);
  area.addEventListener("blur", show);
  model.on("change:hint", show);
  show();
  el.appendChild(area);
  return () => model.off("change:hint", show);
}

export default { render };
