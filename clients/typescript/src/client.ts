import createClient, { type Client } from "openapi-fetch";

import { errorFromResponse, errorFromStreamEvent } from "./errors.js";
import type {
  Capabilities,
  CreateSandboxRequest,
  Diagnostics,
  ErrorBody,
  Event as LifecycleEvent,
  ExecRequest,
  ExecResponse,
  ExecStreamExit,
  ExecStreamOutput,
  FileWritten,
  Health,
  Sandbox,
  paths,
} from "./generated/schema.js";
import { readServerSentEvents } from "./sse.js";

/** Address of a `smolvm server` started with no options. */
export const DEFAULT_BASE_URL = "http://127.0.0.1:8000";

/** Options of {@link Smolvm}. */
export interface SmolvmOptions {
  /** Root URL of the server, `http://127.0.0.1:8000` by default. */
  baseUrl?: string;
  /** API token of a server started with `--token`, sent as `Authorization: Bearer`. */
  token?: string;
  /** The `fetch` to send requests with, `globalThis.fetch` by default. */
  fetch?: (request: Request) => Promise<Response>;
}

/** Per-call options. */
export interface RequestOptions {
  /** Aborts the request. Aborting an exec stream kills the command. */
  signal?: AbortSignal;
}

/** Output of a command, one `stdout` or `stderr` chunk of an exec stream. */
export interface ExecStreamOutputChunk {
  type: "stdout" | "stderr";
  /** Text decoded as UTF-8 across chunk boundaries. Invalid bytes become U+FFFD. */
  data: string;
}

/** The last chunk of an exec stream: how the command ended. */
export interface ExecStreamExitChunk {
  type: "exit";
  /** Exit status, or 128 + N when the command was killed by signal N. */
  exitCode: number;
  durationMs: number;
  /** Whether the command was killed for running past its `timeout`. */
  timedOut: boolean;
  /** The signal that killed the command, or null when none did. */
  signal: number | null;
}

/** One chunk of {@link SandboxApi.execStream}. */
export type ExecStreamChunk = ExecStreamOutputChunk | ExecStreamExitChunk;

/** A `lagged` event: the client fell behind and missed some lifecycle events. */
export interface LaggedEvent {
  type: "lagged";
  /** Number of events that were dropped. */
  missed: number;
}

/** One item of {@link Smolvm.events}. */
export type SmolvmEvent = (LifecycleEvent & { id: string }) | LaggedEvent;

/** Options of {@link FilesApi.write}. */
export interface WriteFileOptions extends RequestOptions {
  /**
   * Permission bits: a number such as `0o755`, or an octal string such as
   * `"755"`. The server's default is `644`.
   */
  mode?: number | string;
  /** Whether to create missing parent directories (the server's default is false). */
  createParents?: boolean;
}

/** Bytes to upload; a string is sent as UTF-8. */
export type FileData = Uint8Array | ArrayBuffer | Blob | string;

type ApiClient = Client<paths>;

/**
 * A client of the smolvm HTTP API.
 *
 * ```ts
 * const smolvm = new Smolvm();
 * const sandbox = await smolvm.sandbox.create({ memory: 512 });
 * const result = await smolvm.sandbox.exec(sandbox.id, { command: "uname -a" });
 * await smolvm.sandbox.delete(sandbox.id);
 * ```
 *
 * Error responses become a {@link SmolvmError}.
 */
export class Smolvm {
  /** The generated openapi-fetch client, for endpoints this class does not wrap. */
  readonly client: ApiClient;
  /** Sandbox lifecycle, commands and files. */
  readonly sandbox: SandboxApi;

  constructor(options: SmolvmOptions = {}) {
    const headers: Record<string, string> = {};
    if (options.token !== undefined) {
      headers["Authorization"] = `Bearer ${options.token}`;
    }
    this.client = createClient<paths>({
      baseUrl: options.baseUrl ?? DEFAULT_BASE_URL,
      headers,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    this.sandbox = new SandboxApi(this.client);
  }

  /** Returns the server's health, `{"status": "ok", ...}`, from `GET /healthz`. */
  async health(options: RequestOptions = {}): Promise<Health> {
    const { data, error, response } = await this.client.GET("/healthz", { signal: options.signal });
    return expectData(data, error, response);
  }

  /** Returns the options and limits the server supports. */
  async capabilities(options: RequestOptions = {}): Promise<Capabilities> {
    const { data, error, response } = await this.client.GET("/sdk/v1/capabilities", {
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /** Runs the host checks of `smolvm doctor` on the server and returns them. */
  async diagnostics(options: RequestOptions = {}): Promise<Diagnostics> {
    const { data, error, response } = await this.client.GET("/sdk/v1/diagnostics", {
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /**
   * Streams lifecycle events (`sandbox.created`, `sandbox.running`, ...)
   * from the moment of connecting, until the server stops or the caller
   * leaves the loop or aborts `signal`.
   */
  async *events(options: RequestOptions = {}): AsyncGenerator<SmolvmEvent, void, undefined> {
    const controller = new AbortController();
    const unlink = forwardAbort(options.signal, controller);
    try {
      const { data, error, response } = await this.client.GET("/sdk/v1/events", {
        parseAs: "stream",
        signal: controller.signal,
      });
      const body = expectData(data, error, response);
      if (!body) {
        throw new Error("the event stream response has no body");
      }
      for await (const event of readServerSentEvents(body)) {
        if (event.event === "lagged") {
          const lagged = parseEventData<{ missed: number }>(event.data, "lagged");
          yield { type: "lagged", missed: lagged.missed };
        } else {
          yield { ...parseEventData<LifecycleEvent>(event.data, event.event), id: event.id };
        }
      }
    } finally {
      controller.abort();
      unlink();
    }
  }
}

/** The `/sandboxes` endpoints, as `smolvm.sandbox`. */
export class SandboxApi {
  readonly #client: ApiClient;
  /** File upload and download, as `smolvm.sandbox.files`. */
  readonly files: FilesApi;

  constructor(client: ApiClient) {
    this.#client = client;
    this.files = new FilesApi(client);
  }

  /**
   * Creates and boots a sandbox, returning once it accepts commands.
   *
   * NOTE: the first create on a host builds the default image, which takes
   * minutes. Node's built-in fetch (undici) gives up on a response whose
   * headers take more than 300 s. Pass a `fetch` with a longer
   * `headersTimeout` if the image may not be built yet.
   */
  async create(body: CreateSandboxRequest = {}, options: RequestOptions = {}): Promise<Sandbox> {
    const { data, error, response } = await this.#client.POST("/sandboxes", {
      body,
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /** Lists every sandbox on the host, including those the CLI created. */
  async list(options: RequestOptions = {}): Promise<Sandbox[]> {
    const { data, error, response } = await this.#client.GET("/sandboxes", {
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /** Returns one sandbox's state. */
  async get(id: string, options: RequestOptions = {}): Promise<Sandbox> {
    const { data, error, response } = await this.#client.GET("/sandboxes/{id}", {
      params: { path: { id } },
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /** Stops the sandbox if it runs, then deletes it with its disk. */
  async delete(id: string, options: RequestOptions = {}): Promise<void> {
    const { error, response } = await this.#client.DELETE("/sandboxes/{id}", {
      params: { path: { id } },
      signal: options.signal,
    });
    if (!response.ok) {
      throw errorFromResponse(response, error);
    }
  }

  /** Powers a running sandbox off, keeping its disk, and returns it. */
  async stop(id: string, options: RequestOptions = {}): Promise<Sandbox> {
    const { data, error, response } = await this.#client.POST("/sandboxes/{id}/stop", {
      params: { path: { id } },
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /** Boots a stopped sandbox again and returns it once it accepts commands. */
  async start(id: string, options: RequestOptions = {}): Promise<Sandbox> {
    const { data, error, response } = await this.#client.POST("/sandboxes/{id}/start", {
      params: { path: { id } },
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /**
   * Runs a command and returns its exit code and output. A non-zero exit
   * code is a result, not an error. A command that runs past `timeout`
   * raises a SmolvmError with code `command_timeout`, whose `partialOutput`
   * has what the command wrote before it was killed.
   *
   * NOTE: Node's built-in fetch (undici) gives up on a response whose
   * headers take more than 300 s. For longer commands use
   * {@link SandboxApi.execStream}, or pass a `fetch` with a longer
   * `headersTimeout`.
   */
  async exec(id: string, body: ExecRequest, options: RequestOptions = {}): Promise<ExecResponse> {
    const { data, error, response } = await this.#client.POST("/sandboxes/{id}/exec", {
      params: { path: { id } },
      body,
      signal: options.signal,
    });
    return expectData(data, error, response);
  }

  /**
   * Runs a command and yields its output as it is written: `stdout` and
   * `stderr` chunks, then one `exit` chunk. Output has no size cap. A
   * command that runs past `timeout` is killed and ends with an `exit`
   * chunk whose `timedOut` is true.
   *
   * Leaving the loop early, or aborting `signal`, closes the connection,
   * and the server then kills the command and everything it started.
   * Error responses, and an `error` event in the stream (the sandbox was
   * deleted while the command ran), raise a SmolvmError.
   */
  async *execStream(
    id: string,
    body: ExecRequest,
    options: RequestOptions = {},
  ): AsyncGenerator<ExecStreamChunk, void, undefined> {
    const controller = new AbortController();
    const unlink = forwardAbort(options.signal, controller);
    try {
      const { data, error, response } = await this.#client.POST("/sandboxes/{id}/exec/stream", {
        params: { path: { id } },
        body,
        parseAs: "stream",
        signal: controller.signal,
      });
      const stream = expectData(data, error, response);
      if (!stream) {
        throw new Error(`the exec stream response for sandbox ${id} has no body`);
      }

      for await (const event of readServerSentEvents(stream)) {
        switch (event.event) {
          case "stdout":
          case "stderr": {
            const output = parseEventData<ExecStreamOutput>(event.data, event.event);
            yield { type: event.event, data: output.data };
            break;
          }
          case "exit": {
            const exit = parseEventData<ExecStreamExit>(event.data, "exit");
            yield {
              type: "exit",
              exitCode: exit.exit_code,
              durationMs: exit.duration_ms,
              timedOut: exit.timed_out,
              signal: exit.signal ?? null,
            };
            return;
          }
          case "error":
            throw errorFromStreamEvent(parseEventData<Partial<ErrorBody>>(event.data, "error"));
          default:
            // Event names this client does not know are skipped, so a newer
            // server can add some without breaking it.
            break;
        }
      }
      throw new Error(
        `the exec stream for sandbox ${id} ended before its exit event; the connection was closed`,
      );
    } finally {
      // Closes the connection if it is still open, which kills the command.
      controller.abort();
      unlink();
    }
  }
}

/** The `/sandboxes/{id}/files` endpoints, as `smolvm.sandbox.files`. */
export class FilesApi {
  readonly #client: ApiClient;

  constructor(client: ApiClient) {
    this.#client = client;
  }

  /**
   * Uploads `data` to the absolute `path` in the sandbox, replacing any
   * file there. The file appears whole or not at all.
   */
  async write(
    id: string,
    path: string,
    data: FileData,
    options: WriteFileOptions = {},
  ): Promise<FileWritten> {
    const query: { path: string; mode?: string; create_parents?: boolean } = { path };
    if (options.mode !== undefined) {
      query.mode = octalMode(options.mode);
    }
    if (options.createParents !== undefined) {
      query.create_parents = options.createParents;
    }

    const { data: written, error, response } = await this.#client.PUT("/sandboxes/{id}/files", {
      params: { path: { id }, query },
      // The OpenAPI document describes the raw body as an array of byte
      // values, but the server reads the bytes as they are sent.
      body: toBody(data) as unknown as number[],
      bodySerializer: (body) => body,
      headers: { "Content-Type": "application/octet-stream" },
      signal: options.signal,
    });
    return expectData(written, error, response);
  }

  /** Downloads the file at the absolute `path` in the sandbox. */
  async read(id: string, path: string, options: RequestOptions = {}): Promise<Uint8Array> {
    const { data, error, response } = await this.#client.GET("/sandboxes/{id}/files", {
      params: { path: { id }, query: { path } },
      parseAs: "arrayBuffer",
      signal: options.signal,
    });
    const bytes = expectData(data, error, response);
    // openapi-fetch returns undefined for a body with `Content-Length: 0`.
    return new Uint8Array(bytes ?? new ArrayBuffer(0));
  }
}

/** Returns the data of a 2xx response, or throws its SmolvmError. */
function expectData<T>(data: T | undefined, error: unknown, response: Response): T {
  if (!response.ok) {
    throw errorFromResponse(response, error);
  }
  return data as T;
}

function parseEventData<T>(data: string, event: string): T {
  try {
    return JSON.parse(data) as T;
  } catch (cause) {
    throw new Error(`the server sent a \`${event}\` event whose data is not JSON: ${data}`, {
      cause,
    });
  }
}

/** Forwards an abort of `signal` to `controller`, and returns a function that stops forwarding. */
function forwardAbort(signal: AbortSignal | undefined, controller: AbortController): () => void {
  if (!signal) {
    return () => undefined;
  }
  if (signal.aborted) {
    controller.abort(signal.reason);
    return () => undefined;
  }
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

function octalMode(mode: number | string): string {
  if (typeof mode === "string") {
    return mode;
  }
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new RangeError(`invalid file mode ${mode}: expected permission bits from 0 to 0o7777`);
  }
  return mode.toString(8);
}

function toBody(data: FileData): Uint8Array | ArrayBuffer | Blob {
  return typeof data === "string" ? new TextEncoder().encode(data) : data;
}
