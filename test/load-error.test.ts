// An addon that does not load (here: LONGCAT_ADDON naming a file that is not there; for a user, no
// prebuild for the platform and no source build) is a typed E_LOAD error at import whose message
// says how to build from source, the same steps scripts/install.mjs prints.
import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';

it('importing the package without a loadable addon throws E_LOAD saying how to build it', () => {
  const probe = `import('./dist/index.js').then(
    () => console.log(JSON.stringify({ loaded: true })),
    e => console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })),
  );`;
  const r = spawnSync(process.execPath, ['-e', probe], {
    encoding: 'utf8',
    env: { ...process.env, LONGCAT_ADDON: 'build/no-such-addon.node' },
  });
  expect(r.status, r.stderr).toBe(0);
  const e = JSON.parse(r.stdout.trim().split('\n').pop()!);
  expect(e).toMatchObject({ name: 'LoadError', code: 'E_LOAD' });
  expect(e.message).toContain('Could not load LONGCAT_ADDON=build/no-such-addon.node');
  expect(e.message).toContain('npm install --save-dev cmake-js node-addon-api');
  expect(e.message).toContain('npm rebuild longcat-flash --build-from-source');
});
