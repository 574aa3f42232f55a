// The developer's whole journey through the portal in headless Chromium: sign up, confirm
// the email from the outbox, sign in, create an application, subscribe it to a plan, copy
// its key, call the API through the gateway, hit the plan's rate limit, see the usage chart
// and the invoice line, rotate the key (the old one works for the overlap, then stops),
// revoke the new one. Run by crates/gatehouse/tests/portal.rs, which starts the gateway.
import { chromium } from 'playwright-core';
import { readdirSync, readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const portal = process.env.PORTAL_URL;
const gateway = process.env.GATEWAY_URL;
const outbox = process.env.OUTBOX;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const email = `ada.${Date.now()}@example.com`;
const password = 'correct horse battery staple';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(key) {
  const response = await fetch(`${gateway}/books/1`, { headers: { 'x-api-key': key } });
  await response.arrayBuffer();
  return response.status;
}

async function until(what, check, timeoutMs) {
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function mailLink(to, path) {
  const files = readdirSync(outbox).filter((f) => f.endsWith('.eml')).sort().reverse();
  for (const file of files) {
    const text = readFileSync(join(outbox, file), 'utf8');
    if (!text.includes(`\r\nTo: ${to}\r\n`)) continue;
    const match = text.match(new RegExp(`https?://\\S+${path}\\?token=[A-Za-z0-9_-]+`));
    if (match) return match[0];
  }
  throw new Error(`no mail to ${to} with a ${path} link in ${outbox}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu'],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
const page = await context.newPage();
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const step = (text) => console.log(`journey: ${text}`);

try {
  step('catalog and reference');
  await page.goto(`${portal}/`);
  await page.getByRole('link', { name: 'Books API' }).waitFor();
  await shot('catalog');
  await page.getByRole('link', { name: 'Books API' }).click();
  await page.getByRole('heading', { name: 'Reference' }).waitFor();
  assert.ok(await page.locator('#op-getBook').isVisible(), 'the getBook operation is shown');
  await shot('reference');

  step('sign up and confirm the email');
  await page.getByRole('link', { name: 'Sign up' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Name').fill('Ada Lovelace');
  await page.getByLabel('Password').fill('too short');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByText('Use at least 10 characters.').waitFor();
  await page.getByLabel('Password').fill(password);
  await shot('signup');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByRole('heading', { name: 'Check your inbox' }).waitFor();
  await page.goto(mailLink(email, '/verify'));
  await page.getByText('Your email is confirmed').waitFor();

  step('sign in');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill('wrong password!!');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Email or password is wrong.').waitFor();
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Your applications' }).waitFor();

  step('create an application and subscribe it');
  await page.getByLabel('Name').fill('Reading list');
  await page.getByLabel('Description').fill('Keeps track of what I read.');
  await page.getByRole('button', { name: 'Create application' }).click();
  await page.getByRole('heading', { name: 'Reading list' }).waitFor();
  const appUrl = page.url().split('?')[0];
  await page.getByLabel('Subscribe to').selectOption('starter');
  await page.getByRole('button', { name: 'Subscribe' }).click();
  await page.getByText('Subscribed: the key works').waitFor();

  step('get a key and call the API with it');
  await page.getByRole('button', { name: 'Create a key' }).click();
  const key = (await page.locator('#new-key').textContent()).trim();
  assert.match(key, /^live_[0-9a-f]{12}_[0-9a-f]{40}$/);
  await shot('key');
  const admittedAfter = await until('the key works at the gateway', async () => (await call(key)) === 200, 2000);
  assert.ok(admittedAfter < 1000, `the key took ${admittedAfter} ms to work`);

  step("hit the plan's rate limit");
  let admitted = 1;
  let status = 200;
  while (status === 200 && admitted < 20) {
    status = await call(key);
    if (status === 200) admitted += 1;
  }
  assert.equal(status, 429, 'the plan limits the key');
  assert.ok(admitted >= 5 && admitted <= 6, `${admitted} admitted before the limit`);

  step('see the usage chart and the invoice line');
  await until('the usage is on the chart', async () => {
    await page.goto(appUrl);
    const shown = Number(await page.locator('figure[data-requests]').first().getAttribute('data-requests'));
    return shown === admitted;
  }, 5000);
  const line = page.locator('tr.invoice-line', { hasText: 'Starter requests 1 to 1,000' });
  await line.waitFor();
  assert.ok((await line.textContent()).includes(`${admitted} requests`), 'the invoice counts the requests');
  await shot('application');

  step('rotate the key: the old one works for the overlap, then stops');
  await sleep(2100); // let the rate limit refill
  const row = page.locator('tr', { hasText: key.split('_')[1] });
  await row.getByRole('combobox').selectOption('4');
  await row.getByRole('button', { name: 'Rotate' }).click();
  const rotated = (await page.locator('#new-key').textContent()).trim();
  assert.notEqual(rotated, key);
  const rotatedAt = Date.now();
  await until('the new key works', async () => (await call(rotated)) === 200, 2000);
  assert.equal(await call(key), 200, 'the old key works during the overlap');
  await until('the old key stops after the overlap', async () => (await call(key)) === 401, 8000);
  const stoppedAfter = Date.now() - rotatedAt;
  assert.ok(stoppedAfter >= 2500, `the old key stopped after only ${stoppedAfter} ms`);

  step('revoke the new key');
  await page.goto(appUrl);
  const newRow = page.locator('tr', { hasText: rotated.split('_')[1] });
  await newRow.getByRole('button', { name: 'Revoke' }).click();
  await page.getByText('Key revoked').waitFor();
  const refusedAfter = await until('the revoked key is refused', async () => (await call(rotated)) === 401, 2000);
  assert.ok(refusedAfter < 1000, `the revoked key took ${refusedAfter} ms to stop`);
  await shot('revoked');

  step('try the API in the sandbox console with a sandbox key');
  await page.goto(appUrl);
  await page.getByRole('button', { name: 'Create a sandbox key' }).click();
  const sandboxKey = (await page.locator('#new-key').textContent()).trim();
  assert.match(sandboxKey, /^sandbox_[0-9a-f]{12}_[0-9a-f]{40}$/);
  await page.goto(`${portal}/`);
  await page.getByRole('link', { name: 'Books API' }).click();
  await page.getByLabel('Operation').selectOption({ label: 'GET /books/{id}' });
  await page.getByLabel('Path (fill in the parameters)').fill('/books/1');
  await page.getByLabel('Sandbox key').fill(sandboxKey);
  await until('the sandbox answers', async () => {
    await page.getByRole('button', { name: 'Send' }).click();
    const text = (await page.locator('#try-result').textContent()) ?? '';
    return text.startsWith('200 OK');
  }, 5000);
  const answer = await page.locator('#try-result').textContent();
  assert.ok(answer.includes('x-gatehouse-sandbox: mock'), answer);
  assert.ok(answer.includes('"title": "Dune"'), answer);
  await shot('try-it');

  step('sign out');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('link', { name: 'Sign in' }).waitFor();
  await page.goto(appUrl);
  assert.ok(page.url().endsWith('/login'), 'signed out: the application page asks to sign in');
  console.log(`journey: done (${admitted} requests admitted before the limit)`);
} catch (error) {
  await shot('failure').catch(() => {});
  console.error(`journey failed at ${page.url()}:`, error);
  process.exitCode = 1;
} finally {
  await browser.close();
}
