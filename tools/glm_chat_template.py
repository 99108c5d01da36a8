"""The GLM-style chat template of kiln's demo model and chat fixture (no dependencies).

Without tools, tool messages or reasoning it renders exactly what the models were trained and
recorded with: [gMASK]<sop>, then <|role|>\\ncontent per message, assistant turns stripped,
unknown roles raising. With them it adds GLM-4.7/5's blocks: the tool list in a system turn,
an assistant's reasoning in <think></think> and its calls as
<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>, and tool results
as <tool_response> blocks after <|observation|>. `enable_thinking=False` (chat_template_kwargs)
closes an empty think block after the generation prompt, as GLM's templates do.
"""

CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools %}<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson(ensure_ascii=False) }}\n{% endfor %}</tools>\n\n"
    "For each function call, output the function name and arguments within the following XML format:\n"
    "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
    "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}"
    "{%- elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{% if message.get('reasoning_content') %}<think>{{ message['reasoning_content'].strip() }}</think>{%- endif %}"
    "{{ (message['content'] or '').strip() }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set f = call['function'] if call.get('function') else call %}<tool_call>{{ f['name'] }}"
    "{%- for k, v in (f.get('arguments') or {}).items() %}<arg_key>{{ k }}</arg_key><arg_value>"
    "{{ v if v is string else v | tojson(ensure_ascii=False) }}</arg_value>{%- endfor %}</tool_call>"
    "{%- endfor %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|observation|>{%- endif %}"
    "{{ '\n<tool_response>\n' }}{{ message['content'] }}{{ '\n</tool_response>' }}"
    "{%- else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{%- endif %}{% endif %}"
)
