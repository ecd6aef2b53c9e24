/**
 * YAML for the job and sweep specs the lab writes (`gpulab job submit train.job.yaml`):
 * maps, lists, strings, numbers, booleans and null, emitted so that any YAML reader
 * (PyYAML's YAML 1.1 as much as YAML 1.2) reads back exactly the same values.
 */

export type YamlValue = string | number | boolean | null | YamlValue[] | IYamlMap;

export interface IYamlMap {
  [key: string]: YamlValue | undefined;
}

const INDENT = '  ';

/**
 * A string that needs no quotes: it starts with a letter or '_' and holds only letters,
 * digits and `_ . / -`, so it cannot be read as a number, a date, a key or an indicator.
 */
const PLAIN = /^[A-Za-z_][A-Za-z0-9_./-]*$/;

/** Words YAML 1.1 reads as booleans or null (any case): they must be quoted to stay strings. */
const RESERVED = new Set(['y', 'n', 'yes', 'no', 'true', 'false', 'on', 'off', 'null']);

/** The YAML document for `value` (a map: one `key: value` per line), ending in a newline. */
export function toYaml(value: YamlValue): string {
  if (isMap(value)) {
    const lines = mapLines(value, '');
    return lines.length ? `${lines.join('\n')}\n` : '{}\n';
  }
  if (Array.isArray(value) && value.some(v => isMap(v) || Array.isArray(v))) {
    return `${listLines(value, '').join('\n')}\n`;
  }
  return `${inline(value)}\n`;
}

/** `text` as a YAML scalar: plain where that reads back as the same string, else quoted. */
export function yamlString(text: string): string {
  if (PLAIN.test(text) && !RESERVED.has(text.toLowerCase())) {
    return text;
  }
  return quoted(text);
}

/**
 * `value` as a YAML number: YAML 1.1 reads an exponent as a float only with a dot in the
 * mantissa and a sign in the exponent (`1.0e-07`; `1e-7` would be a string there).
 */
export function yamlNumber(value: number): string {
  if (Number.isNaN(value)) {
    return '.nan';
  }
  if (!Number.isFinite(value)) {
    return value > 0 ? '.inf' : '-.inf';
  }
  const text = String(value);
  const match = /^(-?)(\d+)(\.\d+)?e([+-]?)(\d+)$/.exec(text);
  if (!match) {
    return text;
  }
  const [, sign, whole, fraction, expSign, exponent] = match;
  return `${sign}${whole}${fraction ?? '.0'}e${expSign || '+'}${exponent}`;
}

function isMap(value: YamlValue | undefined): value is IYamlMap {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A value on one line: a scalar, or a list or map in flow style (`[a, b]`, `{}`). */
function inline(value: YamlValue): string {
  if (value === null) {
    return 'null';
  }
  if (typeof value === 'string') {
    return yamlString(value);
  }
  if (typeof value === 'number') {
    return yamlNumber(value);
  }
  if (typeof value === 'boolean') {
    return value ? 'true' : 'false';
  }
  if (Array.isArray(value)) {
    return `[${value.map(inline).join(', ')}]`;
  }
  const entries = Object.entries(value).filter(([, v]) => v !== undefined) as [string, YamlValue][];
  return `{${entries.map(([k, v]) => `${yamlString(k)}: ${inline(v)}`).join(', ')}}`;
}

/** Whether `value` is written on the line of its key (scalars, empty and flat collections). */
function fitsOnLine(value: YamlValue): boolean {
  if (Array.isArray(value)) {
    return value.every(v => !isMap(v) && !Array.isArray(v));
  }
  return !isMap(value) || Object.values(value).every(v => v === undefined);
}

function mapLines(map: IYamlMap, indent: string): string[] {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(map)) {
    if (value === undefined) {
      continue;
    }
    const name = `${indent}${yamlString(key)}:`;
    if (fitsOnLine(value)) {
      lines.push(`${name} ${inline(value)}`);
    } else if (isMap(value)) {
      lines.push(name, ...mapLines(value, indent + INDENT));
    } else {
      lines.push(name, ...listLines(value as YamlValue[], indent + INDENT));
    }
  }
  return lines;
}

function listLines(list: YamlValue[], indent: string): string[] {
  const lines: string[] = [];
  for (const item of list) {
    if (fitsOnLine(item)) {
      lines.push(`${indent}- ${inline(item)}`);
      continue;
    }
    // the item's first line follows the dash; the rest line up under it
    const inner = isMap(item)
      ? mapLines(item, indent + INDENT)
      : listLines(item as YamlValue[], indent + INDENT);
    lines.push(`${indent}- ${inner[0].slice(indent.length + INDENT.length)}`, ...inner.slice(1));
  }
  return lines;
}

/**
 * `text` double-quoted: escapes for the quote, the backslash, and every character a YAML
 * reader would refuse or fold (controls, DEL and C1, line and paragraph separators, BOM).
 */
function quoted(text: string): string {
  let out = '"';
  for (const char of text) {
    const code = char.codePointAt(0) as number;
    if (char === '"' || char === '\\') {
      out += `\\${char}`;
    } else if (char === '\n') {
      out += '\\n';
    } else if (char === '\t') {
      out += '\\t';
    } else if (char === '\r') {
      out += '\\r';
    } else if (
      code < 0x20 ||
      (code >= 0x7f && code <= 0x9f) ||
      code === 0x2028 ||
      code === 0x2029 ||
      code === 0xfeff ||
      code === 0xfffe ||
      code === 0xffff ||
      (code >= 0xd800 && code <= 0xdfff)
    ) {
      out += `\\u${code.toString(16).padStart(4, '0')}`;
    } else {
      out += char;
    }
  }
  return `${out}"`;
}
