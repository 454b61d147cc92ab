// Tool calling in chat prompts (lib/chat.ts): the model card's tool description block and call
// format in the built-in LongCat template, tool calls and tool results in the history, which
// template renders a chat with tools (the checkpoint's when it renders tools, else the built-in
// one), and parseToolCalls on well-formed and malformed output.
import { describe, expect, it } from 'vitest';
import {
  LONGCAT_CHAT_TEMPLATE,
  applyChatTemplate,
  formatLongcatChat,
  longcatToolDescription,
  parseToolCalls,
  renderChatPrompt,
  type ChatMessage,
  type ToolDefinition,
} from '../lib/chat.js';

const weather: ToolDefinition = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const clock: ToolDefinition = { type: 'function', function: { name: 'now' } };

// The model card's block (SPEC 8.2), written out by hand for the one tool.
const NOTE =
  '**Note**: For each function call, return a json object with function name and arguments within <longcat_tool_call></longcat_tool_call> XML tags as follows:\n' +
  '<longcat_tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</longcat_tool_call>\n' +
  'When multiple functions need to be called simultaneously, each function call should be wrapped in its own <longcat_tool_call> tag and placed consecutively. For example:\n' +
  '<longcat_tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</longcat_tool_call><longcat_tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</longcat_tool_call>';
const WEATHER_BLOCK =
  '## Tools\nYou have access to the following tools: \n\n### Tool namespace: function\n\n' +
  '#### Tool name: get_weather\n\nDescription: The weather in a city.\n\nInputSchema: \n' +
  '{\n  "type": "object",\n  "properties": {\n    "city": {\n      "type": "string"\n    }\n  },\n  "required": [\n    "city"\n  ]\n}\n\n' +
  NOTE;

describe('the built-in LongCat format with tools', () => {
  it("renders the model card's tool description, then ## Messages and the chat", () => {
    expect(longcatToolDescription([weather])).toBe(WEATHER_BLOCK);
    const msgs: ChatMessage[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Weather in Paris?' },
    ];
    expect(formatLongcatChat(msgs, { tools: [weather] })).toBe(
      `${WEATHER_BLOCK}\n\n## Messages\nSYSTEM:Be brief. [Round 0] USER:Weather in Paris? ASSISTANT:`,
    );
    // several tools: one section each under the one namespace heading; no description, no schema
    const two = longcatToolDescription([weather, clock]);
    expect(two).toContain('#### Tool name: get_weather\n\n');
    expect(two.indexOf('#### Tool name: now\n\nDescription: \n\nInputSchema: \n{}\n\n**Note**')).toBeGreaterThan(
      two.indexOf('#### Tool name: get_weather'),
    );
    expect(two.match(/### Tool namespace: function/g)).toHaveLength(1);
    // no tools: the plain format
    expect(formatLongcatChat(msgs, { tools: [] })).toBe(formatLongcatChat(msgs));
  });

  it('renders tool calls after the assistant content and tool results as the next user turn', () => {
    const msgs: ChatMessage[] = [
      { role: 'user', content: 'Weather in Paris and the time?' },
      {
        role: 'assistant',
        content: 'Checking.',
        toolCalls: [
          { id: 'a', name: 'get_weather', arguments: '{"city":"Paris"}' },
          { id: 'b', name: 'now', arguments: '{}' },
        ],
      },
      { role: 'tool', content: '{"temp_c":21}', toolCallId: 'a' },
      { role: 'tool', content: '12:00', toolCallId: 'b' },
    ];
    expect(formatLongcatChat(msgs, { tools: [weather, clock] })).toBe(
      `${longcatToolDescription([weather, clock])}\n\n## Messages\n` +
        '[Round 0] USER:Weather in Paris and the time? ASSISTANT:Checking.' +
        '<longcat_tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</longcat_tool_call>' +
        '<longcat_tool_call>\n{"name": "now", "arguments": {}}\n</longcat_tool_call></longcat_s>' +
        ' [Round 1] USER:<longcat_tool_response>\n{"temp_c":21}\n</longcat_tool_response>' +
        '<longcat_tool_response>\n12:00\n</longcat_tool_response> ASSISTANT:',
    );
    // tool content is untrusted like user content: its spans are found for literal encoding
    const p = renderChatPrompt({ chat_template: null }, msgs, { tools: [weather, clock] });
    expect(p.literal!.map(([a, b]) => p.text.slice(a, b))).toEqual(['Weather in Paris and the time?', '{"temp_c":21}', '12:00']);
  });

  it('rejects malformed tools and tool calls with typed errors', () => {
    const user: ChatMessage[] = [{ role: 'user', content: 'x' }];
    expect(() => formatLongcatChat(user, { tools: [{ type: 'function', function: { name: '' } }] })).toThrow(/tools\[0\]/);
    expect(() => formatLongcatChat(user, { tools: [{ type: 'x' } as never] })).toThrow(/tools\[0\]/);
    // checked before a checkpoint template sees them too
    expect(() => applyChatTemplate({ chat_template: '{{ tools }}' }, user, { tools: [{ type: 'x' } as never] })).toThrow(
      /tools\[0\]/,
    );
    expect(() =>
      formatLongcatChat([{ role: 'user', content: 'x', toolCalls: [{ id: 'a', name: 'f', arguments: '{}' }] }]),
    ).toThrow(/not an assistant message/);
    expect(() => formatLongcatChat([{ role: 'assistant', content: '', toolCalls: [{ id: 'a', name: 'f' } as never] }])).toThrow(
      /toolCalls must be/,
    );
  });
});

describe('which template renders tools', () => {
  const msgs: ChatMessage[] = [{ role: 'user', content: 'hi' }];
  it("a checkpoint template without a tool format (init-random's): the built-in one renders the chat with tools", () => {
    const cfg = { chat_template: LONGCAT_CHAT_TEMPLATE };
    expect(applyChatTemplate(cfg, msgs, { tools: [weather] })).toBe(formatLongcatChat(msgs, { tools: [weather] }));
    const toolTurn: ChatMessage[] = [
      ...msgs,
      { role: 'assistant', content: '', toolCalls: [{ id: 'a', name: 'now', arguments: '{}' }] },
    ];
    expect(applyChatTemplate(cfg, toolTurn)).toBe(formatLongcatChat(toolTurn));
    // without tools the checkpoint's template still renders
    expect(applyChatTemplate({ chat_template: `X${LONGCAT_CHAT_TEMPLATE}` }, msgs)).toBe(`X${formatLongcatChat(msgs)}`);
  });

  it("a template that renders tools gets them, and the messages' tool calls in HF's shape", () => {
    const template =
      '{% for t in tools %}[{{ t.function.name }}]{% endfor %}' +
      "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}" +
      '{% if m.tool_calls %}{% for c in m.tool_calls %}<{{ c.id }} {{ c.type }} {{ c.function.name }} {{ c.function.arguments.city }}>{% endfor %}{% endif %}' +
      '{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %};{% endfor %}';
    const chat: ChatMessage[] = [
      { role: 'user', content: 'q' },
      { role: 'assistant', content: '', toolCalls: [{ id: 'c1', name: 'get_weather', arguments: '{"city":"Rome"}' }] },
      { role: 'tool', content: 'sunny', toolCallId: 'c1' },
    ];
    expect(applyChatTemplate({ chat_template: template }, chat, { tools: [weather, clock] })).toBe(
      '[get_weather][now]user:q;assistant:<c1 function get_weather Rome>;tool:sunny(c1);',
    );
  });
});

describe('parseToolCalls', () => {
  it('takes well-formed calls out of the text, back to back or between text', () => {
    const text =
      'Let me look.<longcat_tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</longcat_tool_call>' +
      '<longcat_tool_call>{"name":"now","arguments":{}}</longcat_tool_call> done';
    expect(parseToolCalls(text, 'id_')).toEqual({
      content: 'Let me look. done',
      toolCalls: [
        { id: 'id_0', name: 'get_weather', arguments: '{"city":"Paris"}' },
        { id: 'id_1', name: 'now', arguments: '{}' },
      ],
    });
    // arguments absent: an empty object
    expect(parseToolCalls('<longcat_tool_call>{"name":"now"}</longcat_tool_call>').toolCalls).toEqual([
      { id: 'call_0', name: 'now', arguments: '{}' },
    ]);
  });

  it('leaves malformed spans as text: invalid JSON, another shape, an unclosed marker', () => {
    for (const text of [
      'a<longcat_tool_call>{"name": "f", "arguments": {</longcat_tool_call>b',
      '<longcat_tool_call>["f"]</longcat_tool_call>',
      '<longcat_tool_call>{"name": 5, "arguments": {}}</longcat_tool_call>',
      '<longcat_tool_call>{"name": "f", "arguments": "x=1"}</longcat_tool_call>',
      'x<longcat_tool_call>{"name": "f", "arguments": {}}',
      'no calls at all',
    ])
      expect(parseToolCalls(text)).toEqual({ content: text, toolCalls: [] });
    // a bad span next to a good one: only the good one is taken
    const mixed =
      '<longcat_tool_call>oops</longcat_tool_call><longcat_tool_call>{"name":"g","arguments":{"k":1}}</longcat_tool_call>';
    expect(parseToolCalls(mixed)).toEqual({
      content: '<longcat_tool_call>oops</longcat_tool_call>',
      toolCalls: [{ id: 'call_0', name: 'g', arguments: '{"k":1}' }],
    });
  });
});
