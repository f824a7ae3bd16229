"""The tiny models' tokenizer: byte-level BPE trained on a small embedded English corpus.

Every UTF-8 string round-trips (all 256 byte symbols are in the alphabet), ChatML special tokens
and a ChatML chat template make it behave like Qwen's. Training is deterministic for the fixed
corpus, so every run yields the same vocabulary. Used by `talaria_cli.tiny_model`.
"""

from __future__ import annotations

from talaria_cli.tiny_chat_templates import _CONTENT

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
TOKENIZER_VOCAB = 1024  # including the 256 byte symbols and the 3 special tokens

# ChatML, as used by Qwen. Content may be a string or a list of OpenAI-style parts, of
# which only the text parts are rendered. No default system prompt is injected.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}" + _CONTENT +
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Our own text, varied in topic and punctuation, with a little non-ASCII so that common
# accented letters get merges of their own. Only used to train the tokenizer.
CORPUS = """\
The morning train left the station a few minutes late, and nobody seemed to mind.
A small cat slept on the windowsill while the rain tapped softly against the glass.
She opened the old notebook and found a list of names written in faded blue ink.
Could you tell me how far it is to the nearest library? I think I am lost.
The recipe calls for two cups of flour, one egg, a pinch of salt and some warm milk.
In 1969, astronauts walked on the Moon for the first time; millions watched on television.
He said, "Let's meet at noon by the fountain," but he arrived at a quarter past one.
Mountains covered in snow rose above the valley, and the river ran cold and clear.
Our team reviewed the report on Tuesday and agreed to publish it next week.
The museum's new exhibition shows paintings, maps, and letters from the 18th century.
Please remember to water the plants, feed the fish, and lock the back door.
Why do leaves change color in autumn? Because the green chlorophyll breaks down.
The bakery on Elm Street sells bread, croissants, and a very good apple pie.
After the storm, the streets were quiet and the air smelled of wet earth.
Learning a new language takes patience, practice, and a sense of humour.
The children built a sandcastle with towers, walls, and a moat full of seawater.
Ten thousand people ran the marathon, and the winner finished in 2 hours and 8 minutes.
The doctor asked her to rest for a week and to drink plenty of water.
A good question is often more useful than a quick answer.
The orchestra played a quiet piece by the river while the sun went down.
If the printer jams again, turn it off, wait ten seconds, and turn it back on.
Farmers in the north planted wheat, barley, and potatoes earlier than usual this year.
The lighthouse keeper wrote in his journal every night for forty years.
We walked along the beach, collecting shells and smooth grey stones.
My grandmother's garden had roses, tomatoes, beans, and a tall sunflower by the gate.
The meeting has been moved to Thursday at 3:30 pm in room 204.
Scientists measured the temperature of the ocean at different depths.
The price of the ticket was $12.50, which included a map and a cup of coffee.
She plays the violin, he plays the piano, and their son plays the drums loudly.
The bridge was closed for repairs, so we took the long road through the forest.
Stars are easier to see far from the city lights, on a clear and moonless night.
Every Saturday, the market fills the square with fruit, cheese, flowers, and music.
The pilot announced that we would land in about twenty minutes.
Reading before bed helps some people relax and fall asleep faster.
The kettle whistled, and he poured hot water over the tea leaves.
Our neighbours are friendly; they often share vegetables from their garden.
The students asked many questions about the history of the ancient city.
It is important to back up your files, because computers sometimes fail.
The wind was strong enough to blow the hats off people's heads.
A fox crossed the road at dawn and disappeared into the tall grass.
The hotel room was small but clean, with a view of the harbour and the boats.
I would like a table for two, near the window, if possible.
The committee will announce its decision at the end of the month.
Fresh snow fell overnight, and the whole town looked white and silent in the morning.
He fixed the bicycle chain, pumped up the tyres, and rode off to work.
The story ends with the two friends meeting again after many years apart.
Water boils at 100 degrees Celsius at sea level, but at a lower temperature on a mountain.
The bus was crowded, so she stood near the door and read the news on her phone.
They painted the kitchen yellow and hung a clock above the table.
When the power went out, we lit candles and played cards until midnight.
Bees carry pollen from flower to flower, which helps plants produce seeds and fruit.
The teacher wrote a long equation on the board and asked who could solve it.
The café near the station serves a naïve little crème brûlée that everyone loves.
In Zürich and München the signs say Straße, Grüße, and Größe; in Paris, déjà vu and façade.
Tokyo is written 東京, and Beijing is written 北京; both are large capital cities.
Hello, world! Is this the right way to the post office, or should we turn left?
The library opens at nine o'clock and closes at six, except on Sundays.
Numbers like 3.14159, 2.71828, and 1.41421 appear again and again in mathematics.
Good software is tested carefully, documented clearly, and released with care.
The old clock in the hall struck twelve, and everyone went quietly to bed.
"""


def build_tokenizer(model_max_length: int = 2048):
    """Train the byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

    BPE training in `tokenizers` is deterministic for a fixed corpus, so every run produces
    the same vocabulary (and hence the same model vocab size).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols up front: this is what makes every UTF-8 string encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # generation stops at the end of the assistant turn
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,  # like Qwen: no BOS is prepended
        model_max_length=model_max_length,
        # Otherwise decode() may "clean up" spaces before punctuation and break round trips.
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
