/**
 * A parser for server-sent events (the `text/event-stream` format of the
 * WHATWG HTML standard, section "Server-sent events"), for the streaming
 * endpoints of the smolvm server.
 */

/** One dispatched server-sent event. */
export interface ServerSentEvent {
  /** The `event` field, or `message` when the event named none. */
  event: string;
  /** The `data` lines joined with `\n`. */
  data: string;
  /** The last `id` field seen in the stream so far, or `""`. */
  id: string;
}

/**
 * An incremental parser: feed it text as it arrives and it returns the
 * events that each blank line completes. Lines may end in `\n`, `\r\n` or
 * `\r`, and a chunk may end anywhere, even between `\r` and `\n`.
 */
export class ServerSentEventParser {
  #line = "";
  #afterCarriageReturn = false;
  #eventType = "";
  #data: string[] = [];
  #lastEventId = "";

  /** Parses the next piece of the stream and returns the events it completes. */
  feed(text: string): ServerSentEvent[] {
    const events: ServerSentEvent[] = [];
    let start = 0;

    for (let i = 0; i < text.length; i++) {
      const char = text[i];
      if (char !== "\n" && char !== "\r") {
        continue;
      }
      // The `\n` of a `\r\n` pair ends no second line.
      const isPairedNewline = char === "\n" && i === start && this.#afterCarriageReturn;
      this.#afterCarriageReturn = char === "\r";
      if (isPairedNewline) {
        start = i + 1;
        continue;
      }
      const line = this.#line + text.slice(start, i);
      this.#line = "";
      start = i + 1;
      const event = this.#processLine(line);
      if (event) {
        events.push(event);
      }
    }

    if (start < text.length) {
      this.#line += text.slice(start);
      this.#afterCarriageReturn = false;
    }
    return events;
  }

  #processLine(line: string): ServerSentEvent | undefined {
    if (line === "") {
      return this.#dispatch();
    }
    if (line.startsWith(":")) {
      return undefined; // a comment, such as a keep-alive
    }

    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }

    switch (field) {
      case "event":
        this.#eventType = value;
        break;
      case "data":
        this.#data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) {
          this.#lastEventId = value;
        }
        break;
      default:
        // `retry` sets an EventSource's reconnection delay; this parser
        // never reconnects, so it ignores it with other unknown fields.
        break;
    }
    return undefined;
  }

  #dispatch(): ServerSentEvent | undefined {
    const hasData = this.#data.length > 0;
    const event: ServerSentEvent = {
      event: this.#eventType || "message",
      data: this.#data.join("\n"),
      id: this.#lastEventId,
    };
    this.#eventType = "";
    this.#data = [];
    return hasData ? event : undefined;
  }
}

/**
 * Reads server-sent events from a response body. The bytes are decoded as
 * UTF-8 across chunk boundaries, with a leading byte order mark removed.
 * An event that the stream ends before completing is discarded, as the
 * standard requires. Leaving the loop early cancels the body.
 */
export async function* readServerSentEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<ServerSentEvent, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new ServerSentEventParser();
  let finished = false;

  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      yield* parser.feed(decoder.decode(value, { stream: true }));
    }
    finished = true;
    yield* parser.feed(decoder.decode());
  } finally {
    if (!finished) {
      // Cancelling closes the connection. It rejects when the request was
      // already aborted, which is the outcome wanted here.
      await reader.cancel().catch(() => undefined);
    }
    reader.releaseLock();
  }
}
