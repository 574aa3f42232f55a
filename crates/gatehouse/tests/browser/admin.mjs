// An admin's journey through the dashboard in headless Chromium: sign in, approve a pending
// subscription (the application's key works at the gateway within a second), lower a
// plan's rate limit (the gateway enforces it within a second), read the audit log. Run by
// crates/gatehouse/tests/portal.rs, which starts the gateway and seeds the store.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const dashboard = process.env.DASHBOARD_URL;
const gateway = process.env.GATEWAY_URL;
const key = process.env.KEY;
const subscription = process.env.SUBSCRIPTION_ID;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call() {
  const response = await fetch(`${gateway}/books/1`, { headers: { 'x-api-key': key } });
  await response.arrayBuffer();
  return { status: response.status, policy: response.headers.get('ratelimit-policy') ?? '' };
}

async function until(what, check, timeoutMs) {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(25);
  }
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
const page = await (await browser.newContext({ viewport: { width: 1200, height: 900 } })).newPage();
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const step = (text) => console.log(`admin: ${text}`);

try {
  assert.equal((await call()).status, 403, 'a pending subscription grants nothing');

  step('sign in');
  await page.goto(`${dashboard}/dashboard`);
  await page.getByLabel('Email').fill(process.env.ADMIN_EMAIL);
  await page.getByLabel('Password').fill(process.env.ADMIN_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Traffic' }).waitFor();

  step('approve the pending subscription');
  await page.getByRole('link', { name: /subscription.* to approve/ }).click();
  const row = page.locator(`tr[data-subscription="${subscription}"]`);
  assert.ok((await row.textContent()).includes('pending'));
  await shot('dashboard-subscriptions');
  await row.getByRole('button', { name: 'Approve' }).click();
  await page.locator(`tr[data-subscription="${subscription}"] .tag.approved`).waitFor();
  const admittedAfter = await until('the approved key works', async () => (await call()).status === 200, 2000);
  assert.ok(admittedAfter < 1000, `approval took ${admittedAfter} ms to reach the gateway`);

  step("lower the plan's rate limit");
  await page.getByRole('link', { name: 'Products' }).click();
  await page.locator('#gold-requests-0').fill('2');
  await page.locator('#gold-per-0').fill('60');
  await page.getByRole('button', { name: 'Save Gold' }).click();
  await page.locator('#gold-requests-0[value="2"]').waitFor();
  const savedAt = Date.now();
  // The new limit has its own counters: its policy header names q=2 once it is in force.
  await until('the new limit is enforced', async () => (await call()).policy.includes('q=2'), 2000);
  const enforcedAfter = Date.now() - savedAt;
  assert.ok(enforcedAfter < 1000, `the new limit took ${enforcedAfter} ms`);
  assert.equal((await call()).status, 200, 'the second request of the new limit passes');
  assert.equal((await call()).status, 429, 'the third is refused');

  step('read the audit log');
  await page.getByRole('link', { name: 'Audit log' }).click();
  const approve = page.locator('tr.audit-entry', { hasText: 'subscription.approve' });
  await approve.waitFor();
  assert.ok((await approve.textContent()).includes(`admin:${process.env.ADMIN_EMAIL}`));
  const update = page.locator('tr.audit-entry', { hasText: 'plan.update' });
  assert.ok((await update.textContent()).includes('"requests":2'), 'the plan change is in the log');
  await shot('dashboard-audit');

  step('traffic');
  await page.getByRole('link', { name: 'Traffic' }).click();
  await page.getByRole('heading', { name: 'By route, last 30 days' }).waitFor();
  const live = Number(await page.locator('#live').getAttribute('data-requests'));
  assert.ok(live >= 3, `the live minute shows the admitted requests (${live})`);
  const liveRow = page.locator('#live-table tr', { hasText: 'partner' });
  assert.ok((await liveRow.textContent()).includes('books'), 'by route and application');
  await shot('dashboard-traffic');
  step('publish a product with a plan');
  await page.getByRole('link', { name: 'Products' }).click();
  await page.locator('#new-product summary').click();
  await page.locator('#product-id').fill('reviews');
  await page.locator('#new-name').fill('Reviews API');
  await page.locator('#new-description').fill('What readers think.');
  await page.locator('#new-product input[name="route"][value="books"]').check();
  await page.locator('#new-product input[name="sandbox"]').check();
  await page.locator('#new-openapi').fill(JSON.stringify({
    openapi: '3.0.3', info: { title: 'Reviews', version: '1' },
    paths: { '/books/{id}': { get: { responses: { 200: { description: 'Reviews', content: { 'application/json': { example: { stars: 5 } } } } } } } },
  }));
  await page.getByRole('button', { name: 'Create product' }).click();
  await page.getByRole('heading', { name: /Reviews API/ }).waitFor();
  await page.getByText('New plan of Reviews API').click();
  const planForm = page.locator('form[action="/dashboard/products/reviews/plans"]');
  await planForm.locator('input[name="id"]').fill('reviews-free');
  await planForm.locator('input[name="name"]').fill('Reviews Free');
  await planForm.locator('input[name="requests"]').fill('5');
  await planForm.locator('input[name="per_seconds"]').fill('60');
  await planForm.getByRole('button', { name: 'Create plan' }).click();
  await page.locator('#plan-reviews-free').waitFor();
  await shot('dashboard-products');
  const catalog = await (await fetch(`${process.env.PORTAL_URL}/apis/reviews`)).text();
  assert.ok(catalog.includes('Reviews Free') && catalog.includes('Try it in the sandbox'), 'the portal shows the new product');
  console.log(`admin: done (approval in ${admittedAfter} ms, new limit in ${enforcedAfter} ms)`);
} catch (error) {
  await shot('admin-failure').catch(() => {});
  console.error(`admin journey failed at ${page.url()}:`, error);
  process.exitCode = 1;
} finally {
  await browser.close();
}
