/**
 * A small element builder. Everything the page shows is built with DOM calls and text nodes, never HTML
 * strings: user ids and property values come from callers of the gateway and must never become markup.
 */

export type Child = Node | string | number | null | undefined | false;
type Attrs = Readonly<Record<string, string | number | boolean | null | undefined | ((event: Event) => void)>>;

function apply(element: Element, attrs: Attrs | null | undefined, children: readonly (Child | readonly Child[])[]): void {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function') element.addEventListener(name.replace(/^on/, ''), value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === 'number' ? String(child) : child);
  }
}

/** An HTML element: `h('a', { href: '#/users', class: 'nav' }, 'Users')`. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: (Child | readonly Child[])[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  apply(element, attrs, children);
  return element;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element: `s('rect', { x: 0, y: 0, width: 4, height: 10 })`. */
export function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: (Child | readonly Child[])[]): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG_NS, tag);
  apply(element, attrs, children);
  return element;
}

/** Replaces an element's content. */
export function show(parent: Element, ...children: (Child | readonly Child[])[]): void {
  parent.replaceChildren();
  apply(parent, null, children);
}
