// The operator console (/console/) in Chromium: a campus admin and a platform admin sign in;
// the campus admin sees only its campus's jobs (another campus's job is "No such job"); dead
// jobs are retried in bulk through the UI with a confirmation that shows the count; every
// page passes axe-core; screenshots of the overview (and a flow run's DAG, when flows exist)
// for the README.
//
// Setup the demo seed lacks (a second campus with its admin, a platform admin, dead jobs)
// is written with psql into the suite's database (ITSUR_DATABASE_URL, PSQL from run.sh);
// the new accounts reuse the demo admin's password hash, so they sign in with its password.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  Api, BASE, DEMO, SCREENSHOTS, assertAccessible, launch, newPage, signIn, until,
} from './lib.mjs';

const ROOT = { email: 'root@platform.example', password: DEMO.admin.password };
const OTHER = { email: 'admin@other.example', password: DEMO.admin.password };

function psql(sql) {
  return execFileSync(process.env.PSQL || 'psql', ['-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', process.env.ITSUR_DATABASE_URL, '-c', sql], { encoding: 'utf8' }).trim();
}

let context;
let page;
let demoCampus;
let otherCampus;
const deadOurs = [];
let deadTheirs;
let finishedTable;

/** Inserts a dead job (in the finished-jobs table of this engine) and returns its id. */
function deadJob(campus, n) {
  return psql(`INSERT INTO ${finishedTable} (id, kind, queue, priority, state, payload, run_at, attempt,
      max_attempts, timeout_secs, progress, cancel_requested, last_error, campus_id, created_at,
      finished_at, updated_at)
    VALUES (gen_random_uuid(), 'noop', 'default', 1, 'dead', '{"browser": ${n}}', now(), 5, 5, 60, 0,
      false, 'browser test: boom', '${campus}', now(), now(), now())
    RETURNING id`).split('\n')[0];
}

before(async () => {
  finishedTable = psql("SELECT CASE WHEN to_regclass('jobs_history') IS NULL THEN 'jobs' ELSE 'jobs_history' END");
  demoCampus = psql("SELECT campus_id FROM users WHERE email = 'admin@itsur.edu'");
  otherCampus = psql(`INSERT INTO campuses (id, name, slug, email_domains, time_zone)
    VALUES (gen_random_uuid(), 'Other campus', 'other-${process.pid}', '{other.example}', 'UTC') RETURNING id`).split('\n')[0];
  psql(`INSERT INTO users (id, campus_id, email, display_name, password_hash, role)
    SELECT gen_random_uuid(), NULL, '${ROOT.email}', 'Root Operator', password_hash, 'platform_admin' FROM users WHERE email = 'admin@itsur.edu';
    INSERT INTO users (id, campus_id, email, display_name, password_hash, role)
    SELECT gen_random_uuid(), '${otherCampus}', '${OTHER.email}', 'Other Admin', password_hash, 'campus_admin' FROM users WHERE email = 'admin@itsur.edu'`);
  for (let i = 0; i < 3; i++) deadOurs.push(deadJob(demoCampus, i));
  deadTheirs = deadJob(otherCampus, 99);
  context = await launch();
  page = await newPage(context);
});

after(async () => {
  if (context) await context.close();
});

/** Signs out, then opens the console's first page (the sign-in form). */
async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.goto(`${BASE}/console/`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
}

test('a campus admin signs in, sees the overview of its campus, and it passes axe', async () => {
  await page.goto(`${BASE}/console/`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await assertAccessible(page, 'console sign-in');
  await signIn(page, DEMO.admin);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.locator('.overview[aria-busy="false"]').waitFor();
  await page.getByText('Jobs and events of your campus').waitFor();
  // Cron is platform-wide: not in a campus admin's navigation.
  assert.equal(await page.locator('#app-nav a[data-page="cron"]').count(), 0);
  await assertAccessible(page, 'console overview (campus admin)');
  assert.deepEqual(page.problems(), []);
});

test('a campus admin lists only its campus; another campus\'s job is not there', async () => {
  await page.goto(`${BASE}/console/#/jobs?state=dead`);
  await page.locator('#jobs-table tbody tr').first().waitFor();
  const ids = await page.locator('#jobs-table tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.id));
  assert.deepEqual([...ids].sort(), [...deadOurs].sort());
  await page.goto(`${BASE}/console/#/jobs/${deadTheirs}`);
  await page.getByText('No such job.').waitFor();
  await page.goto(`${BASE}/console/#/jobs/${deadOurs[0]}`);
  await page.locator('#job-payload').getByText('"browser": 0').waitFor();
  await assertAccessible(page, 'console job detail');
});

test('bulk retry of dead jobs through the UI, after a confirmation that shows the count', async () => {
  await page.goto(`${BASE}/console/#/jobs?state=dead`);
  await page.locator('#jobs-table tbody tr').first().waitFor();
  await assertAccessible(page, 'console jobs');
  await page.getByRole('button', { name: 'Retry all matching…' }).click();
  const dialog = page.locator('#bulk-dialog');
  await dialog.getByRole('heading', { name: 'Retry 3 matching jobs?' }).waitFor();
  await assertAccessible(page, 'console bulk confirmation');
  await dialog.getByRole('button', { name: 'Retry 3 jobs' }).click();
  await dialog.getByText('Done: 3 jobs changed').waitFor();
  await dialog.getByRole('button', { name: 'Close' }).click();
  // Through the API: ours are no longer dead (queued again, or already run by the worker);
  // the other campus's dead job was not touched.
  const admin = await Api.login(DEMO.admin);
  await until(async () => {
    const states = await Promise.all(deadOurs.map(async (id) => (await admin.ok('GET', `/admin/console/jobs/${id}`)).data.state));
    return states.every((s) => s !== 'dead') && states;
  }, { what: 'the retried jobs to leave the dead state' });
  assert.equal(psql(`SELECT state FROM ${finishedTable} WHERE id = '${deadTheirs}'`), 'dead');
  // The table reloads without the retried jobs.
  await until(async () => (await page.locator('#jobs-table tbody tr').count()) === 0, { what: 'an empty dead list' });
  await page.goto(`${BASE}/console/#/audit`);
  await page.getByRole('cell', { name: 'jobs.bulk_retry' }).first().waitFor();
  await assertAccessible(page, 'console audit');
  await signOut();
});

test('the other campus\'s admin sees its own dead job only', async () => {
  await signIn(page, OTHER);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.goto(`${BASE}/console/#/jobs`);
  await page.locator(`#jobs-table tbody tr[data-id="${deadTheirs}"]`).waitFor();
  assert.equal(await page.locator('#jobs-table tbody tr').count(), 1);
  await signOut();
});

test('a platform admin sees every campus, queues, workers, cron and dead events; screenshot', async () => {
  await signIn(page, ROOT);
  await page.getByText('Jobs and events of every campus').waitFor();
  await page.locator('.overview[aria-busy="false"]').waitFor();
  await page.screenshot({ path: path.join(SCREENSHOTS, 'console-overview.png'), fullPage: true });
  for (const [hash, heading] of [
    ['#/jobs', 'Jobs'], ['#/queues', 'Queues'], ['#/workers', 'Workers'],
    ['#/cron', 'Cron schedules'], ['#/outbox', 'Dead outbox events'], ['#/audit', 'Audit log'],
    ['#/flows', 'Flows'],
  ]) {
    await page.goto(`${BASE}/console/${hash}`);
    await page.getByRole('heading', { name: heading, exact: true }).waitFor();
    // Each page has loaded when its table (or its "nothing here" line) is in.
    await page.locator('.console-page table, .console-page p.muted').first().waitFor();
    await assertAccessible(page, `console ${heading}`);
  }
  await page.goto(`${BASE}/console/#/jobs`);
  await page.locator(`#jobs-table tbody tr[data-id="${deadTheirs}"]`).waitFor();
  await page.goto(`${BASE}/console/#/workers`);
  await page.getByRole('cell', { name: /\d+/ }).first().waitFor();
  assert.deepEqual(page.problems(), []);
});

test('a flow run\'s DAG shows each step\'s state live; screenshot', async (t) => {
  const admin = await Api.login(DEMO.admin);
  const probe = await admin.call('GET', '/flows?limit=1');
  if (probe.status === 404) {
    t.skip('this server has no flows');
    return;
  }
  const noop = (id, deps, sleepMs) => ({ id, node: 'noop', dependsOn: deps, input: { sleepMs }, maxAttempts: 1 });
  const flow = await admin.ok('POST', '/flows', {
    name: `console-dag-${process.pid}`,
    description: 'A diamond for the console test',
    definition: {
      steps: [
        noop('fetch', [], 300), noop('price', ['fetch'], 300), noop('stock', ['fetch'], 300),
        noop('notify', ['price', 'stock'], 300),
      ],
    },
  });
  // Still signed in as the platform admin of the previous test.
  const run = await admin.ok('POST', `/flows/${flow.data.id}/runs`, { input: {} });
  await page.goto(`${BASE}/console/#/flows/runs/${run.data.id}`);
  await page.locator('#run-live[data-state="live"]').waitFor();
  await page.locator('#run-dag g[data-step="notify"]').waitFor();
  // The page follows the run over /ws until every step has finished.
  await page.locator('#run-status .state-succeeded').waitFor({ timeout: 20000 });
  for (const step of ['fetch', 'price', 'stock', 'notify']) {
    await page.locator(`#run-dag g.step-succeeded[data-step="${step}"]`).waitFor();
  }
  await page.screenshot({ path: path.join(SCREENSHOTS, 'console-flow-dag.png'), fullPage: true });
  await assertAccessible(page, 'console flow run');
  assert.deepEqual(page.problems(), []);
});
