import type { CommandTimeoutBody, ErrorBody, ErrorCode } from "./generated/schema.js";

/** Header in which the server repeats an error's code. */
export const ERROR_CODE_HEADER = "x-smolvm-error-code";

/** Code of an error whose response carried none, such as a proxy's 502 page. */
export const UNKNOWN_ERROR_CODE = "unknown";

/**
 * HTTP status the server uses for each error code. An `error` event in an
 * exec stream carries only a code, so the status comes from this table.
 */
const STATUS_BY_CODE: Record<ErrorCode, number> = {
  sandbox_not_found: 404,
  file_not_found: 404,
  not_found: 404,
  method_not_allowed: 405,
  invalid_request: 422,
  invalid_state: 409,
  command_timeout: 408,
  permission_denied: 403,
  unauthorized: 401,
  host_not_allowed: 403,
  origin_not_allowed: 403,
  unsupported_media_type: 415,
  body_too_large: 413,
  file_too_large: 413,
  host_unavailable: 503,
  boot_failed: 500,
  agent_error: 500,
  internal_error: 500,
};

/** Fields of a {@link SmolvmError}. */
export interface SmolvmErrorInit {
  status: number;
  code: ErrorCode | (string & {});
  detail: string;
  field?: string | undefined;
  body?: unknown;
  headers?: Headers | undefined;
}

/**
 * An error response of the smolvm server: any HTTP status outside 2xx, or
 * an `error` event in an exec stream.
 *
 * A command that exits non-zero is not an error, because its exit code is
 * in the result. Failures below HTTP (connection refused, an aborted request) are
 * thrown as the `fetch` implementation raised them, not as SmolvmError.
 */
export class SmolvmError extends Error {
  /** HTTP status, such as 404. */
  readonly status: number;
  /**
   * Stable error code from the body or the `X-SmolVM-Error-Code` header,
   * such as `sandbox_not_found`, or `unknown` when the response had neither.
   */
  readonly code: ErrorCode | (string & {});
  /** The server's description of what went wrong and how to fix it. */
  readonly detail: string;
  /** The request field at fault (`memory`, `env.FOO`), when one is. */
  readonly field: string | undefined;
  /** The parsed response body: JSON when it parsed, else the text. */
  readonly body: unknown;
  /** Response headers, or undefined for an error event in a stream. */
  readonly headers: Headers | undefined;

  constructor(init: SmolvmErrorInit) {
    super(`${init.detail} (HTTP ${init.status}, ${init.code})`);
    this.name = "SmolvmError";
    this.status = init.status;
    this.code = init.code;
    this.detail = init.detail;
    this.field = init.field;
    this.body = init.body;
    this.headers = init.headers;
  }

  /**
   * The output a command wrote before it was killed, for a
   * `command_timeout` error from `exec`; undefined for every other error.
   */
  get partialOutput(): CommandTimeoutBody | undefined {
    if (this.code !== "command_timeout" || !isObject(this.body)) {
      return undefined;
    }
    if (typeof this.body.exit_code !== "number") {
      return undefined;
    }
    return this.body as unknown as CommandTimeoutBody;
  }
}

/**
 * Builds the SmolvmError for a non-2xx response. `body` is the response
 * body as openapi-fetch returns it: parsed JSON, or the text when it was
 * not JSON, or undefined when it was empty.
 */
export function errorFromResponse(response: Response, body: unknown): SmolvmError {
  const headerCode = response.headers.get(ERROR_CODE_HEADER);
  const errorBody = isObject(body) ? body : undefined;

  const code = stringField(errorBody, "code") ?? headerCode ?? UNKNOWN_ERROR_CODE;
  const text = typeof body === "string" ? body.trim() : "";
  const detail =
    stringField(errorBody, "detail") ??
    (text || response.statusText || `HTTP ${response.status} with no body`);

  return new SmolvmError({
    status: response.status,
    code,
    detail,
    field: stringField(errorBody, "field"),
    body,
    headers: response.headers,
  });
}

/**
 * Builds the SmolvmError for an `error` event of an exec stream, whose
 * data is an ErrorBody. The status is the one the server uses for the
 * code, or 500 for a code this client does not know.
 */
export function errorFromStreamEvent(body: Partial<ErrorBody> | undefined): SmolvmError {
  const code = body?.code ?? UNKNOWN_ERROR_CODE;
  return new SmolvmError({
    status: STATUS_BY_CODE[code as ErrorCode] ?? 500,
    code,
    detail: body?.detail ?? "the exec stream reported an error without a detail",
    field: body?.field ?? undefined,
    body,
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function stringField(body: Record<string, unknown> | undefined, name: string): string | undefined {
  const value = body?.[name];
  return typeof value === "string" ? value : undefined;
}
