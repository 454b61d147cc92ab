// The tokenizer (tokenizer.json through @huggingface/tokenizers, streaming UTF-8-safe decoding) and
// the chat template of SPEC 8.2.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { loadTokenizer, createTokenizer, type LongcatTokenizer } from '../lib/tokenizer.js';
import {
  applyChatTemplate,
  formatLongcatChat,
  renderChatTemplate,
  LONGCAT_CHAT_TEMPLATE,
  type ChatMessage,
} from '../lib/chat.js';
import { msg } from './helpers.js';
import { LongcatError } from '../lib/errors.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-tok-'));
const dir = path.join(root, 'tiny');
let tok: LongcatTokenizer;
beforeAll(async () => {
  await initRandom({ preset: 'tiny', out: dir, seed: 5 });
  tok = await loadTokenizer(dir);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const TEXTS = [
  'Hello world! The quick brown fox jumps over the lazy dog.',
  '  leading and trailing spaces  ',
  'tabs\tand\nnew\r\nlines\n\n\nand   runs',
  "it's 2025: 3.14159 + 1,000 = ?",
  '你好，世界！中文字符测试。',
  '日本語のテキストとカタカナ',
  'emoji 🙂🚀👩‍👩‍👧‍👦 flags 🇫🇷 and ✓ marks',
  'combining é vs é, Ωμέγα, Ελληνικά, кириллица, العربية',
  '\u0000 control \u0007 chars \u007f',
  'mixed 🙂你好 text 🤖 end',
];

describe('tokenizer', () => {
  it('has the LongCat special tokens and generation ids', () => {
    expect(tok.tokenToId('<longcat_unk>')).toBe(0);
    expect(tok.tokenToId('<longcat_s>')).toBe(1);
    expect(tok.tokenToId('</longcat_s>')).toBe(2);
    expect(tok.tokenToId('<longcat_pad>')).toBe(3);
    expect(tok.idToToken(2)).toBe('</longcat_s>');
    expect(tok.eosIds).toEqual([2]);
    expect(tok.bosId).toBe(1);
    expect(tok.padId).toBe(3);
    expect(tok.specialIds.slice(0, 4)).toEqual([0, 1, 2, 3]);
    expect(tok.tokenToId('<longcat_tool_call>')).toBeGreaterThan(259);
    expect(tok.vocabSize).toBeGreaterThan(300);
    const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
    expect(tok.vocabSize).toBeLessThanOrEqual(cfg.vocab_size);
    expect(tok.chatTemplate).toBe(LONGCAT_CHAT_TEMPLATE);
  });

  it('round-trips ASCII and multi-byte UTF-8 (emoji, CJK, combining marks)', () => {
    for (const s of TEXTS) {
      const ids = tok.encode(s);
      for (const id of ids) expect(id).toBeLessThan(tok.vocabSize);
      expect(tok.decode(ids), JSON.stringify(s)).toBe(s);
    }
    // Merges were learned: common English needs well under one token per byte.
    const s = TEXTS[0]!;
    expect(tok.encode(s).length).toBeLessThan(new TextEncoder().encode(s).length * 0.7);
    expect(tok.encode('')).toEqual([]);
    expect(tok.decode([])).toBe('');
  });

  it('encodes special tokens in text as their ids and can skip them when decoding', () => {
    const ids = tok.encode('[Round 0] USER:hi ASSISTANT:ok</longcat_s>');
    expect(ids[ids.length - 1]).toBe(2);
    expect(tok.decode(ids)).toBe('[Round 0] USER:hi ASSISTANT:ok</longcat_s>');
    expect(tok.decode(ids, { skipSpecial: true })).toBe('[Round 0] USER:hi ASSISTANT:ok');
    expect(tok.decode([1, ...tok.encode('x'), 2, 3], { skipSpecial: true })).toBe('x');
    // No BOS/EOS is added unless asked (and this tokenizer's post-processor adds none).
    expect(tok.encode('x', { addSpecial: true })).toEqual(tok.encode('x'));
  });

  it('rejects bad ids with E_ARGUMENT', () => {
    for (const bad of [[-1], [1.5], [tok.vocabSize], [NaN]]) {
      expect(() => tok.decode(bad)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
    }
    for (const bad of [[-1], [1.5], [NaN]]) {
      expect(() => tok.decoder().push(bad)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
    }
    // Ids past the tokenizer (the model's padded vocabulary rows) have no text while streaming.
    const d = tok.decoder();
    expect(d.push([tok.vocabSize, tok.vocabSize + 7])).toBe('');
    expect(d.push(tok.encode('ok'))).toBe('ok');
    expect(() => tok.encode(3 as never)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
  });

  it('streams UTF-8-safe chunks one token at a time', () => {
    let heldBack = 0;
    for (const s of TEXTS) {
      const ids = tok.encode(s);
      const d = tok.decoder();
      let out = '';
      for (const id of ids) {
        const chunk = d.push(id);
        if (chunk === '') heldBack++;
        expect(chunk.includes('\uFFFD'), `chunk of ${JSON.stringify(s)}`).toBe(false);
        // No lone surrogate halves.
        expect(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(chunk)).toBe(false);
        out += chunk;
      }
      out += d.flush();
      expect(out).toBe(s);
    }
    expect(heldBack).toBeGreaterThan(10);
  });

  it('streams with several ids per push, special tokens, and flushes an incomplete tail as U+FFFD', () => {
    const d = tok.decoder({ skipSpecial: true });
    const ids = [...tok.encode('ok 🙂 fine'), 2];
    let out = d.push(ids.slice(0, 3));
    out += d.push(ids.slice(3));
    out += d.flush();
    expect(out).toBe('ok 🙂 fine');
    // A lone first byte of a 4-byte sequence stays held back until flush().
    const emoji = tok.encode('🚀');
    const d2 = tok.decoder();
    expect(d2.push(emoji.slice(0, 1))).toBe('');
    expect(d2.flush()).toBe('\uFFFD');
    expect(d2.push(tok.encode('a'))).toBe('a');
  });

  it('reports a missing or broken tokenizer.json as E_CHECKPOINT', async () => {
    await expect(loadTokenizer(path.join(root, 'none'))).rejects.toMatchObject({ code: 'E_CHECKPOINT' });
    const broken = path.join(root, 'broken');
    mkdirSync(broken);
    writeFileSync(path.join(broken, 'tokenizer.json'), '{"model": ');
    await expect(loadTokenizer(broken)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(/JSON/) });
    expect(() => createTokenizer({ nonsense: true })).toThrow(LongcatError);
  });
});

describe('chat template (SPEC 8.2)', () => {
  const q = 'Paris is...';
  const cases: [string, ChatMessage[], string][] = [
    ['first turn, no system', [msg.user(q)], '[Round 0] USER:Paris is... ASSISTANT:'],
    [
      'first turn, system',
      [msg.system('You are a helpful assistant.'), msg.user('Hi')],
      'SYSTEM:You are a helpful assistant. [Round 0] USER:Hi ASSISTANT:',
    ],
    [
      'multi-turn with system',
      [msg.system('sys'), msg.user('q0'), msg.assistant('r0'), msg.user('q1'), msg.assistant('r1'), msg.user('q2')],
      'SYSTEM:sys [Round 0] USER:q0 ASSISTANT:r0</longcat_s> [Round 1] USER:q1 ASSISTANT:r1</longcat_s> [Round 2] USER:q2 ASSISTANT:',
    ],
    [
      'multi-turn without system',
      [msg.user('q0'), msg.assistant('r0'), msg.user('q1')],
      '[Round 0] USER:q0 ASSISTANT:r0</longcat_s> [Round 1] USER:q1 ASSISTANT:',
    ],
  ];

  it('the built-in format reproduces the SPEC 8.2 strings exactly', () => {
    for (const [what, msgs, want] of cases) expect(formatLongcatChat(msgs), what).toBe(want);
    expect(formatLongcatChat(cases[0]![1], { addGenerationPrompt: false })).toBe('[Round 0] USER:Paris is...');
    expect(() => formatLongcatChat([{ role: 'wizard', content: 'x' }])).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
    expect(() => formatLongcatChat([{ role: 'user' } as never])).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
  });

  it('the Jinja template written by init-random renders the same strings', () => {
    for (const [what, msgs, want] of cases) {
      expect(renderChatTemplate(LONGCAT_CHAT_TEMPLATE, msgs), what).toBe(want);
      expect(applyChatTemplate(dir, msgs), what).toBe(want);
      expect(applyChatTemplate({ chat_template: LONGCAT_CHAT_TEMPLATE }, msgs), what).toBe(want);
      expect(applyChatTemplate(dir, msgs, { addGenerationPrompt: false })).toBe(
        formatLongcatChat(msgs, { addGenerationPrompt: false }),
      );
    }
  });

  it('falls back to the built-in format when the checkpoint has no template, and uses a custom one when it has', () => {
    const bare = path.join(root, 'bare');
    mkdirSync(bare, { recursive: true });
    expect(applyChatTemplate(bare, cases[2]![1])).toBe(cases[2]![2]);
    writeFileSync(path.join(bare, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</longcat_s>' }));
    expect(applyChatTemplate(bare, cases[0]![1])).toBe(cases[0]![2]);
    writeFileSync(
      path.join(bare, 'chat_template.jinja'),
      '{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}',
    );
    expect(applyChatTemplate(bare, cases[0]![1])).toBe('<user>Paris is...</longcat_s>');
    expect(
      applyChatTemplate(bare, cases[0]![1], {
        tokenizerConfig: { chat_template: [{ name: 'default', template: 'X{{ messages|length }}' }] },
      }),
    ).toBe('X1');
    expect(() => renderChatTemplate('{% if %}', cases[0]![1])).toThrow(expect.objectContaining({ code: 'E_CHECKPOINT' }));
  });

  it('tokenizes a chat prompt with </longcat_s> as the EOS id and no BOS', () => {
    const ids = tok.encode(applyChatTemplate(dir, cases[3]![1]));
    expect(ids[0]).not.toBe(1);
    expect(ids.filter(i => i === 2).length).toBe(1);
    expect(tok.decode(ids)).toBe(cases[3]![2]);
  });
});
