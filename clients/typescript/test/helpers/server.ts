// Starts and stops real `smolvm server` processes for the live tests.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { smolvmBinary } from "../../scripts/generate.mjs";

/** How long a server may take to respond to `/healthz` after it starts. */
const STARTUP_TIMEOUT_MS = 30_000;
/** How long a server may take to exit after SIGTERM before it gets SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;
/** Bytes of server output kept for failure messages. */
const LOG_TAIL_BYTES = 16_384;

export { smolvmBinary };

/** Returns why no server can start here (no binary), if that is so. */
export function serverSkipReason(): string | undefined {
  const binary = smolvmBinary();
  if (!existsSync(binary)) {
    return `no smolvm binary at ${binary}; run \`cargo build -p smolvm-cli\` or set SMOLVM_BIN`;
  }
  return undefined;
}

/** Returns the images directory the way smolvm resolves it. */
export function imagesDir(): string {
  if (process.env.SMOLVM_IMAGES_DIR) {
    return process.env.SMOLVM_IMAGES_DIR;
  }
  const stateHome = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  const dataDir = process.env.SMOLVM_DATA_DIR || join(stateHome, "smolvm");
  return join(dataDir, "images");
}

/** Returns why real sandboxes cannot boot here, if they cannot. */
export function sandboxSkipReason(): string | undefined {
  const serverReason = serverSkipReason();
  if (serverReason) {
    return serverReason;
  }
  if (process.getuid?.() !== 0) {
    return "not root; sandboxes need root";
  }
  const manifest = join(imagesDir(), "default", "manifest.json");
  if (!existsSync(manifest)) {
    return `no default image at ${manifest}; run \`smolvm image build\``;
  }
  const qemu = `qemu-system-${process.arch === "arm64" ? "aarch64" : "x86_64"}`;
  const path = (process.env.PATH ?? "").split(delimiter);
  if (!path.some((dir) => dir && existsSync(join(dir, qemu)))) {
    return `${qemu} is not on PATH; run scripts/install-deps.sh`;
  }
  return undefined;
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") {
    throw new Error(`unexpected listening address ${String(address)}`);
  }
  return address.port;
}

/**
 * A `smolvm server` child process on a free loopback port, with a data
 * directory of its own so the tests see only the sandboxes they create.
 * Images still come from the host's images directory.
 */
export class ServerProcess {
  readonly baseUrl: string;
  readonly dataDir: string;
  readonly #child: ChildProcess;
  #log = "";
  #exited: Promise<number | null>;

  private constructor(child: ChildProcess, baseUrl: string, dataDir: string) {
    this.#child = child;
    this.baseUrl = baseUrl;
    this.dataDir = dataDir;
    const keep = (chunk: Buffer) => {
      this.#log = (this.#log + chunk.toString("utf8")).slice(-LOG_TAIL_BYTES);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  /** Starts a server with extra `args` and waits until `/healthz` responds with 200. */
  static async start(args: string[] = []): Promise<ServerProcess> {
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), "smolvm-ts-"));
    const child = spawn(smolvmBinary(), ["server", "--port", String(port), ...args], {
      env: serverEnv(dataDir),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const server = new ServerProcess(child, `http://127.0.0.1:${port}`, dataDir);
    try {
      await server.#waitUntilHealthy();
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }

  /** The last lines the server wrote, for failure messages. */
  get log(): string {
    return this.#log;
  }

  async #waitUntilHealthy(): Promise<void> {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    let exitCode: number | null | undefined;
    void this.#exited.then((code) => (exitCode = code));

    while (Date.now() < deadline) {
      if (exitCode !== undefined) {
        throw new Error(`smolvm server exited with status ${exitCode} before it was healthy:\n${this.#log}`);
      }
      try {
        const response = await fetch(`${this.baseUrl}/healthz`);
        if (response.ok) {
          return;
        }
      } catch {
        // Not listening yet.
      }
      await sleep(100);
    }
    throw new Error(`smolvm server did not answer /healthz within ${STARTUP_TIMEOUT_MS} ms:\n${this.#log}`);
  }

  /**
   * Deletes the sandboxes `ids` with the CLI, for when the server can no
   * longer do it. Sandboxes belong to their supervisors, not to the
   * server, so they outlive it.
   */
  deleteWithCli(ids: string[]): void {
    for (const id of ids) {
      const result = spawnSync(smolvmBinary(), ["sandbox", "delete", id], {
        env: serverEnv(this.dataDir),
        encoding: "utf8",
      });
      if (result.status !== 0) {
        console.log(`cleanup: \`smolvm sandbox delete ${id}\` failed: ${result.stderr}`);
      }
    }
  }

  /**
   * Stops the server by its PID: SIGTERM, then SIGKILL if it is still
   * running after a grace period. Removes the data directory when
   * `removeData` is true.
   */
  async stop(options: { removeData?: boolean } = {}): Promise<void> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      this.#child.kill("SIGTERM");
      const stopped = await Promise.race([this.#exited.then(() => true), sleep(STOP_TIMEOUT_MS, false)]);
      if (!stopped) {
        console.log(`smolvm server (pid ${this.#child.pid}) ignored SIGTERM for ${STOP_TIMEOUT_MS} ms; killing it`);
        this.#child.kill("SIGKILL");
        await this.#exited;
      }
    }
    if (options.removeData ?? true) {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }
}

function serverEnv(dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, SMOLVM_DATA_DIR: dataDir, SMOLVM_IMAGES_DIR: imagesDir() };
  // The server takes its token from here when set; the tests pass --token instead.
  delete env.SMOLVM_API_TOKEN;
  return env;
}
