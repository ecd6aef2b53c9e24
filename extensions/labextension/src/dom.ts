/**
 * The one DOM helper the panels and dialogs share.
 */

/** A new `tag` element with class `cls` and text `text`, appended to `parent` if given. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls: string,
  text = '',
  parent?: HTMLElement
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = cls;
  if (text) {
    node.textContent = text;
  }
  parent?.appendChild(node);
  return node;
}
