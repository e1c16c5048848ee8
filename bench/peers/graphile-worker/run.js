#!/usr/bin/env node
// graphile-worker's side of itsur's `jobs` bench (benches/load.rs, bench/README.md), so that
// "itsur vs graphile-worker" ratios come from the same Postgres in the same quiet run.
//
//   node run.js s1          20,000 no-op jobs   → one JSON line (both configurations)
//   node run.js s3          10,000 × 5 ms jobs  → one JSON line (both configurations)
//   node run.js --one <scenario> <config>      one measurement (what the two above spawn)
//
// Method, as `run_queue` in benches/load.rs does it for itsur: a fresh database per
// measurement (`bench_peer_<random>`, dropped afterwards), graphile-worker's schema installed,
// ONE worker (`run`, concurrency 32) started and listening before any job exists, all jobs
// enqueued in one transaction (`addJobs`, which is one call of the `add_jobs` SQL function;
// its NOTIFY wakes the worker), and the rate = jobs / (first job started → last job finished).
//
// graphile-worker deletes a job when it completes, so there is no history table to read the
// span from. Start = the first `job:start` event; finish = the moment the job table is seen
// empty, polled only once every job has emitted `job:success` (the worker writes completions
// after that event and without awaiting them, in batches when `completeJobBatchDelay` is set:
// the table being empty is what "finished" means in itsur's `finished_at`). Both ends are read
// from this process's monotonic clock. The rate to the last `job:success` alone is reported too.
//
// Each measurement runs in its own Node process (no JIT warmed by the previous one) against
// its own database (no dead tuples left by the previous one). Configurations:
//   defaults  concurrency 32, everything else graphile-worker's defaults (pool of 10, no local
//             queue, no completion batching);
//   tuned     its documented throughput settings (https://worker.graphile.org/docs/performance:
//             localQueue 500, completeJobBatchDelay 0, failJobBatchDelay 0) with the pool it
//             recommends, concurrency + 2.
// Logging is at warning level, as itsur's bench runs its worker with RUST_LOG=warn.
//
// Environment: BENCH_DATABASE_URL (an admin URL of the server, as for `cargo bench`; default
// postgres://postgres@127.0.0.1:5432/postgres), PEER_CONFIGS (default "defaults tuned"),
// PEER_TIMEOUT_SECS (600, per measurement).
"use strict";

// Read by graphile-worker when it loads: skip even formatting the per-job success line.
process.env.NO_LOG_SUCCESS = "1";

const { execFileSync } = require("node:child_process");
const { randomBytes } = require("node:crypto");
const EventEmitter = require("node:events");
const os = require("node:os");
const { performance } = require("node:perf_hooks");
const { setTimeout: sleep } = require("node:timers/promises");
const { Client } = require("pg");
const {
  Logger,
  makeWorkerUtils,
  parseCronItems,
  run,
  runMigrations,
} = require("graphile-worker");
const gwVersion = require("graphile-worker/package.json").version;

const CONCURRENCY = 32;

const SCENARIOS = {
  s1: { name: "S1", jobs: 20000, task: "noop", payload: {} },
  s3: { name: "S3", jobs: 10000, task: "sleep", payload: { ms: 5 } },
};

const CONFIGS = {
  defaults: {},
  tuned: {
    maxPoolSize: CONCURRENCY + 2,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

const taskList = {
  noop: async () => {},
  sleep: async (payload) => {
    await sleep(payload.ms);
  },
};

const logger = new Logger((scope) => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`graphile-worker ${level} ${JSON.stringify(scope)}: ${message}\n`);
  }
});

const ADMIN_URL = (
  process.env.BENCH_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres"
).split("?")[0];

// Like `db_url` in benches/load.rs: a database of the admin URL's server, without TLS
// (encryption over loopback is not what is measured).
function dbUrl(name) {
  return `${ADMIN_URL.slice(0, ADMIN_URL.lastIndexOf("/"))}/${name}?sslmode=disable`;
}

function fail(message) {
  process.stderr.write(`peers/graphile-worker: ${message}\n`);
  process.exit(1);
}

/** Resolves with `event`'s first payload. */
function once(events, event) {
  return new Promise((resolve) => events.once(event, resolve));
}

async function measure(scenario, configName) {
  const sc = SCENARIOS[scenario];
  const config = CONFIGS[configName];
  if (!sc || !config) {
    fail(`unknown scenario or configuration: ${scenario} ${configName}`);
  }
  const name = `bench_peer_${randomBytes(6).toString("hex")}`;
  const admin = new Client({ connectionString: dbUrl(ADMIN_URL.slice(ADMIN_URL.lastIndexOf("/") + 1)) });
  await admin.connect();
  const server = (await admin.query("SELECT current_setting('server_version') AS v, current_setting('fsync') AS f")).rows[0];
  await admin.query(`CREATE DATABASE ${name}`);
  const connectionString = dbUrl(name);
  let runner = null;
  let utils = null;
  try {
    await runMigrations({ connectionString, logger });
    utils = await makeWorkerUtils({ connectionString, logger });

    const events = new EventEmitter();
    let first = null;
    let lastSuccess = null;
    let succeeded = 0;
    let errors = 0;
    let allSucceeded;
    const done = new Promise((resolve) => {
      allSucceeded = resolve;
    });
    events.on("job:start", () => {
      if (first === null) {
        first = performance.now();
      }
    });
    events.on("job:success", () => {
      succeeded += 1;
      if (succeeded === sc.jobs) {
        lastSuccess = performance.now();
        allSucceeded();
      }
    });
    events.on("job:error", ({ error }) => {
      errors += 1;
      process.stderr.write(`peers/graphile-worker: job failed: ${error}\n`);
    });
    const listening = once(events, "pool:listen:success");
    runner = await run({
      connectionString,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      taskList,
      parsedCronItems: parseCronItems([]),
      logger,
      events,
      preset: { worker: config },
    });
    await listening;

    const specs = Array.from({ length: sc.jobs }, () => ({
      identifier: sc.task,
      payload: sc.payload,
    }));
    const t = performance.now();
    await utils.addJobs(specs);
    const enqueueSecs = (performance.now() - t) / 1000;

    const timeoutMs = Number(process.env.PEER_TIMEOUT_SECS || 600) * 1000;
    const timedOut = await Promise.race([done.then(() => false), sleep(timeoutMs).then(() => true)]);
    if (timedOut || errors > 0) {
      throw new Error(`${succeeded} of ${sc.jobs} jobs succeeded, ${errors} errors${timedOut ? ", timed out" : ""}`);
    }
    // The completions still in flight (or in a batch) land now; nothing else runs.
    let drained;
    for (;;) {
      const left = await utils.withPgClient((c) =>
        c.query("SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS left"),
      );
      if (!left.rows[0].left) {
        drained = performance.now();
        break;
      }
      if (performance.now() - lastSuccess > timeoutMs) {
        throw new Error("completed jobs still in the table");
      }
      await sleep(1);
    }
    const secs = (drained - first) / 1000;
    const toSuccess = (lastSuccess - first) / 1000;
    return {
      config: configName,
      options: { concurrency: CONCURRENCY, ...config },
      server_version: server.v,
      fsync: server.f,
      enqueue_jobs_per_s: sc.jobs / enqueueSecs,
      jobs_per_s: sc.jobs / secs,
      span_s: secs,
      jobs_per_s_to_last_success: sc.jobs / toSuccess,
      last_success_to_drained_ms: drained - lastSuccess,
    };
  } finally {
    if (runner) {
      await runner.stop();
      await runner.promise;
    }
    if (utils) {
      await utils.release();
    }
    // The pools close their connections after their release resolves; a forced drop while
    // one is still closing would make it emit an error nobody listens to (and kill us).
    for (let i = 0; i < 1000; i += 1) {
      const open = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1", [name]);
      if (open.rows[0].n === 0) {
        break;
      }
      await sleep(10);
    }
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

function scenarioLine(scenario) {
  const sc = SCENARIOS[scenario];
  if (!sc) {
    fail(`unknown scenario: ${scenario} (s1 | s3)`);
  }
  const configs = (process.env.PEER_CONFIGS || "defaults tuned").split(/\s+/).filter(Boolean);
  const line = {
    peer: "graphile-worker",
    version: gwVersion,
    node: process.version,
    scenario: sc.name,
    jobs: sc.jobs,
    task: sc.task,
    sleep_ms: sc.payload.ms ?? 0,
    processes: 1,
    concurrency: CONCURRENCY,
    rate: "jobs / (first job:start → job table empty, seen after the last job:success)",
    at: new Date().toISOString(),
    machine: { nproc: os.availableParallelism(), loadavg: os.loadavg() },
  };
  for (const config of configs) {
    const out = execFileSync(process.execPath, [__filename, "--one", scenario, config], {
      stdio: ["ignore", "pipe", "inherit"],
      encoding: "utf8",
    });
    line[config] = JSON.parse(out);
  }
  return line;
}

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === "--one" && args.length === 3) {
    const result = await measure(args[1], args[2]);
    // Something of graphile-worker's keeps the event loop alive after its release; the
    // measurement is over and its database dropped, so leave.
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
  } else if (args.length === 1) {
    process.stdout.write(`${JSON.stringify(scenarioLine(args[0]))}\n`);
  } else {
    fail("usage: node run.js s1|s3   (or --one s1|s3 defaults|tuned)");
  }
}

main().catch((e) => fail(e.stack || String(e)));
