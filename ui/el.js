// Building the page's elements: text goes in as text, never as HTML (names and reasons come from the API).

/** An element with attributes and children; `on…` attributes are listeners, true is a boolean attribute, null, undefined and false are left out. */
export function el (tag, attributes = {}, ...children) {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue
    if (name === 'class') node.className = value
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value)
    else node.setAttribute(name, value === true ? '' : String(value))
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)))
  }
  return node
}

/** A feed's items, or one "None" item. */
export function feed (items, line) {
  return items.length === 0 ? [el('li', { class: 'empty' }, 'None')] : items.slice(0, 50).map((item) => el('li', {}, line(item)))
}
