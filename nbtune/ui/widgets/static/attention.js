// nbtune attention view: a head x layer grid of attention thumbnails (click to select), token-to-token arcs for
// the selected layer/head (line opacity = weight; hover a token to isolate its lines), and the rollout strip.
// Every string goes in through textContent or an SVG text node: tokens such as "<script>" show as text.
// Nothing is loaded from the network.

const SVG = "http://www.w3.org/2000/svg";
const ROW_PX = 18;          // arc view: height of one token row
const ARC_MIN = 0.005;      // weights below this draw no line (they would be invisible anyway)

function div(cls, text) {
  const node = document.createElement("div");
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

// mean of a list of (T, T) matrices
function meanOf(maps) {
  const n = maps[0].length;
  const out = Array.from({ length: n }, () => new Array(n).fill(0));
  for (const m of maps) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i][j] += m[i][j] / maps.length;
  return out;
}

// The (T, T) map for a layer index li (-1 = mean over layers) and head h (-1 = mean over heads).
function mapFor(weights, li, h) {
  const layerMaps = li === -1 ? weights : [weights[li]];
  const perLayer = layerMaps.map((heads) => (h === -1 ? meanOf(heads) : heads[h]));
  return perLayer.length === 1 ? perLayer[0] : meanOf(perLayer);
}

// A canvas of T x T pixels (CSS scales it up), darker = more attention (square-root scale); rows = attending token.
function thumbnail(map) {
  const n = map.length;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(n, 1);
  canvas.height = Math.max(n, 1);
  const ctx = canvas.getContext("2d");
  if (!ctx || n === 0) return canvas;
  const image = ctx.createImageData(n, n);
  let max = 0;
  for (const row of map) for (const v of row) max = Math.max(max, v);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const a = max > 0 ? Math.sqrt(map[i][j] / max) : 0; // sqrt: small weights stay visible next to a peak
      const k = 4 * (i * n + j);
      image.data[k] = Math.round(255 - 230 * a);
      image.data[k + 1] = Math.round(255 - 160 * a);
      image.data[k + 2] = Math.round(255 - 60 * a);
      image.data[k + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function buildGrid(model, onPick) {
  const weights = model.get("weights") || [];
  const layers = model.get("layers") || [];
  const nHeads = model.get("n_heads") || 0;
  const grid = div("nbtune-attn-grid");
  grid.style.gridTemplateColumns = `auto repeat(${layers.length + 1}, auto)`;
  grid.appendChild(div("nbtune-attn-corner", "head \\ layer"));
  for (const layer of layers) grid.appendChild(div("nbtune-attn-axis", `L${layer}`));
  grid.appendChild(div("nbtune-attn-axis", "mean"));
  const cells = [];
  for (let h = 0; h <= nHeads; h++) {
    const head = h === nHeads ? -1 : h; // the last row is the mean over heads
    grid.appendChild(div("nbtune-attn-axis", head === -1 ? "mean" : `H${head}`));
    for (let li = 0; li <= layers.length; li++) {
      const layerIndex = li === layers.length ? -1 : li;
      const layer = layerIndex === -1 ? -1 : layers[layerIndex];
      const cell = div("nbtune-attn-thumb" + (layer === -1 || head === -1 ? " nbtune-attn-mean" : ""));
      cell.dataset.layer = String(layer);
      cell.dataset.head = String(head);
      cell.title = `${layer === -1 ? "mean over layers" : "layer " + layer}, ` +
        `${head === -1 ? "mean over heads" : "head " + head}`;
      cell.setAttribute("role", "button");
      cell.tabIndex = 0;
      if (weights.length) cell.appendChild(thumbnail(mapFor(weights, layerIndex, head)));
      cell.addEventListener("click", () => onPick(layer, head));
      cell.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onPick(layer, head); }
      });
      grid.appendChild(cell);
      cells.push(cell);
    }
  }
  const mark = () => {
    const sel = [String(model.get("layer")), String(model.get("head"))];
    for (const c of cells) {
      c.classList.toggle("nbtune-attn-selected", c.dataset.layer === sel[0] && c.dataset.head === sel[1]);
    }
  };
  mark();
  return { node: grid, mark };
}

// Two columns of tokens; a line from token i (left, attending) to token j (right, attended) per weight.
function buildArcs(tokens, map) {
  const n = tokens.length;
  const width = 420, left = 150, right = 270;
  const svg = svgNode("svg", { width, height: n * ROW_PX + 8, class: "nbtune-attn-arcs" });
  const lines = svgNode("g", { class: "nbtune-attn-lines" });
  svg.appendChild(lines);
  const y = (i) => 4 + i * ROW_PX + ROW_PX / 2;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const w = map[i] ? map[i][j] : 0;
      if (!(w >= ARC_MIN)) continue;
      const line = svgNode("line", { x1: left + 4, y1: y(i), x2: right - 4, y2: y(j), "stroke-opacity": Math.min(1, w),
        "stroke-width": 1 + 2 * w, "data-from": i, "data-to": j });
      const tip = svgNode("title");
      tip.textContent = `${tokens[i]} → ${tokens[j]}: ${w.toFixed(3)}`;
      line.appendChild(tip);
      lines.appendChild(line);
    }
  }
  const focus = (side, i) => {
    svg.classList.toggle("nbtune-attn-focus", i !== null);
    for (const line of lines.children) {
      line.classList.toggle("nbtune-attn-hot", i !== null && line.getAttribute(side) === String(i));
    }
  };
  for (const [side, x, anchor] of [["data-from", left, "end"], ["data-to", right, "start"]]) {
    tokens.forEach((token, i) => {
      const label = svgNode("text", { x, y: y(i), "text-anchor": anchor, "dominant-baseline": "middle",
        class: "nbtune-attn-token", "data-side": side, "data-index": i });
      label.textContent = token;
      label.addEventListener("mouseenter", () => focus(side, i));
      label.addEventListener("mouseleave", () => focus(side, null));
      svg.appendChild(label);
    });
  }
  return svg;
}

function buildRollout(model) {
  const tokens = model.get("tokens") || [];
  const values = model.get("rollout") || [];
  const box = div("nbtune-attn-rollout");
  box.appendChild(div("nbtune-attn-label", `Rollout from ${model.get("source") || "the first token"} (all layers)`));
  const strip = div("nbtune-attn-strip");
  const max = Math.max(1e-12, ...values.map((v) => Math.abs(v)));
  tokens.forEach((token, i) => {
    const v = values[i] || 0;
    const cell = document.createElement("span");
    cell.className = "nbtune-attn-cell";
    cell.textContent = token;
    cell.style.backgroundColor = `rgba(31, 119, 180, ${(0.85 * v / max).toFixed(3)})`;
    cell.title = `${token}: ${v.toFixed(3)}`;
    strip.appendChild(cell);
  });
  box.appendChild(strip);
  return box;
}

function selectionText(model) {
  const layer = model.get("layer"), head = model.get("head");
  const which = `${layer === -1 ? "mean over layers" : "layer " + layer}, ` +
    `${head === -1 ? "mean over heads" : "head " + head}`;
  return which +
    " — rows (left) attend to columns (right); hover a token to isolate its lines";
}

function render({ model, el }) {
  const root = div("nbtune-attn");
  el.appendChild(root);
  let grid = null;
  let arcsBox = null;

  const pick = (layer, head) => {
    model.set("layer", layer);
    model.set("head", head);
    model.save_changes();
  };

  const drawArcs = () => {
    const layers = model.get("layers") || [];
    const weights = model.get("weights") || [];
    const layer = model.get("layer");
    const li = layer === -1 ? -1 : layers.indexOf(layer);
    arcsBox.replaceChildren(div("nbtune-attn-label", selectionText(model)));
    if (weights.length && (layer === -1 || li >= 0)) {
      arcsBox.appendChild(buildArcs(model.get("tokens") || [], mapFor(weights, li, model.get("head"))));
    }
  };

  const onSelect = () => {
    if (grid) grid.mark();
    drawArcs();
  };

  const draw = () => {
    root.replaceChildren();
    root.appendChild(div("nbtune-attn-title", model.get("title") || ""));
    const body = div("nbtune-attn-body");
    grid = buildGrid(model, pick);
    const gridBox = div("nbtune-attn-gridbox");
    gridBox.appendChild(div("nbtune-attn-label", `${model.get("level")} level: click a map to select it`));
    gridBox.appendChild(grid.node);
    arcsBox = div("nbtune-attn-arcbox");
    body.appendChild(gridBox);
    body.appendChild(arcsBox);
    root.appendChild(body);
    drawArcs();
    root.appendChild(buildRollout(model));
    root.appendChild(div("nbtune-attn-caption", model.get("caption") || ""));
    const notes = div("nbtune-attn-notes");
    for (const note of model.get("notes") || []) notes.appendChild(div("nbtune-attn-note", note));
    root.appendChild(notes);
  };

  // One Python update (hold_sync) fires a change event per trait: redraw once, after all of them.
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    queueMicrotask(() => { pending = false; draw(); });
  };
  const dataTraits = ["tokens", "weights", "rollout", "layers", "n_heads", "level", "source", "title", "caption",
    "notes"];
  const dataEvents = dataTraits.map((name) => `change:${name}`);
  for (const event of dataEvents) model.on(event, redraw);
  model.on("change:layer", onSelect);
  model.on("change:head", onSelect);
  draw();
  return () => {
    for (const event of dataEvents) model.off(event, redraw);
    model.off("change:layer", onSelect);
    model.off("change:head", onSelect);
  };
}

export default { render };
