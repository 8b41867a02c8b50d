export {
  DEFAULT_BASE_URL,
  FilesApi,
  SandboxApi,
  Smolvm,
  type ExecStreamChunk,
  type ExecStreamExitChunk,
  type ExecStreamOutputChunk,
  type FileData,
  type LaggedEvent,
  type RequestOptions,
  type SmolvmEvent,
  type SmolvmOptions,
  type WriteFileOptions,
} from "./client.js";
export {
  ERROR_CODE_HEADER,
  SmolvmError,
  UNKNOWN_ERROR_CODE,
  errorFromResponse,
  type SmolvmErrorInit,
} from "./errors.js";
export { ServerSentEventParser, readServerSentEvents, type ServerSentEvent } from "./sse.js";
// Every schema of the OpenAPI document as a named type (Sandbox,
// ExecRequest, ExecResponse, ErrorBody, ...), and the `paths`,
// `components` and `operations` maps of the generated client.
export type * from "./generated/schema.js";
