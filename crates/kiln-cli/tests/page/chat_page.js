// Drives kiln's chat page in headless Chromium: ask a question, wait for the streamed
// answer, check it, and keep a screenshot. Usage: node chat_page.js URL SCREENSHOT [API_KEY]
// With API_KEY, the server wants one: the page must ask for it (a prompt dialog) and use it.
// With KILN_PAGE_SCHEMA (a JSON schema) in the environment, it is typed into the page's answer
// format box, and the answer must be JSON that has the schema's required keys.
const { chromium } = require('playwright-core');

(async () => {
  const [url, shot, key] = process.argv.slice(2);
  let asked = 0;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
    page.on('dialog', async (d) => {
      asked += 1;
      if (key) await d.accept(key); else await d.dismiss();
    });
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById('model').textContent !== 'connecting…');
    const model = await page.textContent('#model');
    if (!model || model === 'offline' || model === 'no model loaded') throw new Error('model label: ' + model);
    const schema = process.env.KILN_PAGE_SCHEMA;
    if (schema) {
      await page.click('#format summary');
      await page.fill('#schema', schema);
    }
    await page.fill('#input', 'What is the capital of France?');
    await page.press('#input', 'Enter');
    await page.waitForSelector('.assistant[data-done="1"]', { timeout: 120000 });
    const answer = await page.textContent('.assistant');
    const info = await page.textContent('.assistant .info').catch(() => '');
    await page.screenshot({ path: shot });
    if (!answer || answer.trim().length < 2) throw new Error('no answer: ' + answer);
    if (!/generated tokens/.test(info)) throw new Error('usage info missing: ' + info);
    if (schema) {
      const text = await page.evaluate(() => document.querySelector('.assistant').firstChild.textContent);
      const obj = JSON.parse(text);
      for (const k of JSON.parse(schema).required || []) {
        if (!(k in obj)) throw new Error('answer lacks ' + k + ': ' + text);
      }
    }
    if (asked !== (key ? 1 : 0)) throw new Error('asked for a key ' + asked + ' times, expected ' + (key ? 1 : 0));
    console.log(JSON.stringify({ model, answer, info, asked }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
