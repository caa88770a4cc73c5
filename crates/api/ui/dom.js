// Building DOM nodes without HTML strings: every text from the API goes in as text, never as
// markup, and no inline style is ever set (the Content-Security-Policy forbids them).

const SVG_NS = "http://www.w3.org/2000/svg";

/** Appends `children` (nodes, strings, numbers, nested arrays; null and false are skipped). */
function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
  return node;
}

/** Sets `attrs` on `node`: `on…` functions become listeners, `true` an empty attribute. */
function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "style") throw new Error("inline styles are not allowed (CSP)");
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  return node;
}

/** An HTML element: `h("a", {href: "#/x"}, "text")`. */
export function h(tag, attrs, ...children) {
  return append(setAttributes(document.createElement(tag), attrs), children);
}

/** An SVG element, as `h`. */
export function svg(tag, attrs, ...children) {
  return append(setAttributes(document.createElementNS(SVG_NS, tag), attrs), children);
}

/**
 * A table: `caption`, `columns` (`{label, numeric}`), and `rows`, each `{cells, attrs}`; the first
 * cell of a row heads it (`th scope=row`). Cells are nodes or text, or `{value, attrs}`.
 */
export function table(caption, columns, rows, attrs) {
  const head = h("tr", null, columns.map((c) =>
    h("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)));
  const body = rows.map((row) => h("tr", row.attrs, row.cells.map((cell, i) => {
    const plain = cell === null || typeof cell !== "object" || cell instanceof Node
      || Array.isArray(cell);
    const content = plain ? cell : cell.value;
    const cellAttrs = Object.assign(
      { class: columns[i] && columns[i].numeric ? "num" : null },
      plain ? null : cell.attrs,
    );
    if (i === 0) cellAttrs.scope = "row";
    return h(i === 0 ? "th" : "td", cellAttrs, content);
  })));
  return h("div", { class: "table-wrap" },
    h("table", attrs, h("caption", null, caption), h("thead", null, head), h("tbody", null, body)));
}

/** A section headed by `title` (an `h2` whose id labels the section). */
export function section(id, title, ...children) {
  return h("section", { "aria-labelledby": `${id}-title`, id },
    h("h2", { id: `${id}-title` }, title), children);
}
