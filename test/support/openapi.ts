/**
 * Checks responses against the repository's `openapi.json` (OpenAPI 3.1, JSON Schema 2020-12), for the subset of
 * JSON Schema that document uses: `$ref` to `#/components/schemas/*`, `type` (one or a list), `properties`,
 * `required`, `additionalProperties` (false or a schema), `items`, `enum`, `const`, `oneOf`, `minimum`, `maximum`
 * and `pattern`. A keyword outside that subset fails loudly, so the document cannot drift past what is checked.
 *
 * @example
 * const errors = validateResponse('get', '/metrics/users/{userId}/usage', 200, 'application/json', body);
 * assert.deepEqual(errors, []);
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

type Schema = Record<string, unknown>;

export const openApi = JSON.parse(readFileSync(join(__dirname, '..', '..', 'openapi.json'), 'utf8')) as {
  openapi: string;
  paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: Schema }> }> }>>;
  components: { schemas: Record<string, Schema> };
};

const KNOWN = new Set([
  '$ref',
  'type',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'enum',
  'const',
  'oneOf',
  'minimum',
  'maximum',
  'pattern',
  'description',
  'format',
  'default',
]);

/** Errors of `value` against `schema`, each as `<path>: <reason>`; empty when it conforms. */
export function validate(schema: Schema, value: unknown, path = '$'): string[] {
  for (const keyword of Object.keys(schema)) {
    if (!KNOWN.has(keyword)) throw new Error(`openapi.json uses "${keyword}" at ${path}, which the validator does not check`);
  }
  if (typeof schema.$ref === 'string') {
    const name = schema.$ref.replace('#/components/schemas/', '');
    const target = openApi.components.schemas[name];
    if (target === undefined) return [`${path}: unknown $ref ${schema.$ref}`];
    return validate(target, value, path);
  }
  if (Array.isArray(schema.oneOf)) {
    const matches = (schema.oneOf as Schema[]).filter((s) => validate(s, value, path).length === 0).length;
    return matches === 1 ? [] : [`${path}: matches ${matches} of the oneOf schemas, not exactly one`];
  }
  const errors: string[] = [];
  if (schema.const !== undefined && value !== schema.const) errors.push(`${path}: must be ${JSON.stringify(schema.const)}`);
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) errors.push(`${path}: must be one of ${JSON.stringify(schema.enum)}`);
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? (schema.type as string[]) : [schema.type as string];
    if (!types.some((type) => hasType(value, type))) {
      return [...errors, `${path}: must be ${types.join(' or ')}, got ${value === null ? 'null' : typeof value}`];
    }
  }
  if (typeof value === 'number') {
    if (typeof schema.minimum === 'number' && value < schema.minimum) errors.push(`${path}: below ${schema.minimum}`);
    if (typeof schema.maximum === 'number' && value > schema.maximum) errors.push(`${path}: above ${schema.maximum}`);
  }
  if (typeof value === 'string' && typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(value)) {
    errors.push(`${path}: does not match ${schema.pattern}`);
  }
  if (Array.isArray(value) && schema.items !== undefined) {
    value.forEach((item, i) => errors.push(...validate(schema.items as Schema, item, `${path}[${i}]`)));
  }
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const record = value as Record<string, unknown>;
    const properties = (schema.properties ?? {}) as Record<string, Schema>;
    for (const name of (schema.required ?? []) as string[]) {
      if (!(name in record)) errors.push(`${path}: lacks required "${name}"`);
    }
    for (const [name, item] of Object.entries(record)) {
      if (properties[name] !== undefined) errors.push(...validate(properties[name]!, item, `${path}.${name}`));
      else if (schema.additionalProperties === false) errors.push(`${path}: has unexpected "${name}"`);
      else if (typeof schema.additionalProperties === 'object') {
        errors.push(...validate(schema.additionalProperties as Schema, item, `${path}.${name}`));
      }
    }
  }
  return errors;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    case 'array':
      return Array.isArray(value);
    case 'object':
      return value !== null && typeof value === 'object' && !Array.isArray(value);
    default:
      return typeof value === type;
  }
}

/**
 * Errors of a response against the document's schema for that operation, status and content type. An
 * operation, status or content type the document does not list is an error too.
 */
export function validateResponse(method: string, pathTemplate: string, status: number, contentType: string, body: unknown): string[] {
  const operation = openApi.paths[pathTemplate]?.[method.toLowerCase()];
  if (operation === undefined) return [`${method} ${pathTemplate} is not in openapi.json`];
  const response = operation.responses[String(status)];
  if (response === undefined) return [`${method} ${pathTemplate} has no ${status} response in openapi.json`];
  const media = contentType.split(';')[0]!.trim();
  const schema = response.content?.[media]?.schema;
  if (schema === undefined) return [`${method} ${pathTemplate} ${status} has no ${media} content in openapi.json`];
  return validate(schema, body);
}

/** The path template of a concrete metrics path, e.g. `/metrics/users/a%40b/usage` → `/metrics/users/{userId}/usage`. */
export function pathTemplateOf(pathname: string): string {
  for (const template of Object.keys(openApi.paths)) {
    const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`);
    if (pattern.test(pathname)) return template;
  }
  throw new Error(`no openapi.json path matches ${pathname}`);
}
