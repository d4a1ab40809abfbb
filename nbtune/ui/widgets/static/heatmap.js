// nbtune token heatmap: one attribution's words coloured by score. Diverging and sign-aware: red = pushes the
// target up, blue = pushes it down, strength = |score| / max |score|. Words go in through textContent only, so
// a word such as "<img src=x onerror=...>" shows as text and never becomes an element.

const UP = [214, 39, 40];     // red
const DOWN = [31, 119, 180];  // blue

function div(cls, text) {
  const node = document.createElement("div");
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function colour(score, max) {
  const [r, g, b] = score >= 0 ? UP : DOWN;
  const alpha = max > 0 ? Math.min(1, Math.abs(score) / max) : 0;
  return `rgba(${r}, ${g}, ${b}, ${(0.8 * alpha).toFixed(3)})`;
}

function fmt(score) {
  return (score > 0 ? "+" : "") + (Math.abs(score) >= 1e-3 || score === 0 ? score.toFixed(3) : score.toExponential(2));
}

function render({ model, el }) {
  const root = div("nbtune-heat");
  el.appendChild(root);

  const draw = () => {
    const words = model.get("words") || [];
    const scores = model.get("scores") || [];
    const target = model.get("target") || "";
    const max = Math.max(0, ...scores.map((s) => Math.abs(s)));
    const label = div("nbtune-heat-label");
    label.appendChild(div("nbtune-heat-method", model.get("method") || ""));
    label.appendChild(div("nbtune-heat-target", target ? `→ ${target}` : ""));
    const text = div("nbtune-heat-words");
    words.forEach((word, i) => {
      const s = Number(scores[i] || 0);
      const span = document.createElement("span");
      span.className = "nbtune-heat-word";
      span.textContent = word;
      span.style.backgroundColor = colour(s, max);
      span.title = `${word}: ${fmt(s)}`;
      span.dataset.score = String(s);
      text.appendChild(span);
      text.appendChild(document.createTextNode(" "));
    });
    const legend = div("nbtune-heat-legend");
    const up = document.createElement("span");
    up.className = "nbtune-heat-key nbtune-heat-up";
    up.textContent = `red: pushes ${target || "the target"} up`;
    const down = document.createElement("span");
    down.className = "nbtune-heat-key nbtune-heat-down";
    down.textContent = `blue: pushes it down (max |score| ${fmt(max)})`;
    legend.append(up, down);
    const notes = div("nbtune-heat-notes");
    for (const note of model.get("notes") || []) notes.appendChild(div("nbtune-heat-note", note));
    root.replaceChildren(label, text, legend, notes);
  };

  // One Python update (hold_sync) fires a change event per trait: redraw once, after all of them.
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    queueMicrotask(() => { pending = false; draw(); });
  };
  const events = ["words", "scores", "method", "target", "notes"].map((name) => `change:${name}`);
  for (const event of events) model.on(event, redraw);
  draw();
  return () => { for (const event of events) model.off(event, redraw); };
}

export default { render };
