# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""The knowledge-retention probes of `ki-vla study`, written for this project and kept apart from every training set.

`ENGLISH` is general English prose (no robots, no cubes, no instructions): the next-token distribution of the
pretrained language model on it is what insulation is meant to keep. `CLOZE` are short factual prompts whose
answer is a common word; the study keeps those the pretrained model completes correctly (greedy, every answer token)
and measures how many each trained variant still completes.
"""
from __future__ import annotations

ENGLISH: tuple[str, ...] = (
    "The river that runs through the old town was once used to carry timber from the hills to the coast. In spring "
    "the water rises quickly, and the stone bridge near the market has been rebuilt three times since it was first "
    "raised. Today the banks are lined with small gardens, and on warm evenings families walk along the path to "
    "watch the boats come back from the harbour.",
    "Bread is made from flour, water, salt and yeast. The yeast feeds on the sugars in the dough and releases gas, "
    "which is trapped by the gluten and makes the loaf rise. A longer, cooler rise gives the bread more flavour, "
    "while a hot oven and a little steam help the crust turn brown and crisp before the inside has finished baking.",
    "Most of the Earth's surface is covered by oceans, which store heat and move it slowly around the planet. "
    "Currents carry warm water from the tropics towards the poles, and cold, dense water sinks and returns along "
    "the sea floor. Changes in these currents can alter the weather of whole continents for many years.",
    "When she opened the letter, she recognised her grandmother's handwriting at once. The ink had faded, but the "
    "words were clear: a recipe for plum jam, a list of names, and a short note asking whoever found it to plant "
    "the seeds that were folded inside the paper. She smiled, put the kettle on, and read it again.",
    "A healthy night of sleep helps the body repair tissue and helps the brain sort the memories of the day. "
    "Doctors advise going to bed at the same time each night, keeping the bedroom dark and cool, and avoiding "
    "coffee in the late afternoon. Short naps can help, but long naps late in the day often make sleep worse.",
    "The library was quiet except for the sound of pages turning. On the top floor, a long table stood beside a "
    "window that looked out over the square, and students came early to claim a seat there. The librarian knew "
    "most of them by name and kept a box of pencils on the desk for anyone who had forgotten their own.",
    "Trains changed the way people thought about distance. Before the railway, a journey between two cities could "
    "take several days by coach; afterwards it took a few hours, and towns began to keep the same time so that "
    "timetables made sense. Stations became the busiest buildings in many cities, with shops, hotels and clocks.",
    "Plants take in carbon dioxide from the air and water from the soil, and with the energy of sunlight they turn "
    "them into sugar and oxygen. The green pigment in their leaves absorbs red and blue light and reflects green, "
    "which is why forests look green to us. In autumn, as the pigment breaks down, other colours appear.",
    "The committee met on Tuesday to discuss the budget for the new school year. After a long debate, members agreed "
    "to repair the roof of the sports hall, buy new books for the youngest classes, and delay the plan to build a "
    "second car park. The decision will be reviewed in March, when the final figures are known.",
    "Learning a musical instrument takes patience. At first the fingers feel clumsy and the sound is thin, but "
    "short, regular practice works better than long sessions once a week. Many teachers ask their students to play "
    "slowly, listen carefully, and repeat a difficult passage until it feels easy before playing it at full speed.",
    "Honey bees live in colonies of many thousands. A single queen lays the eggs, while the workers gather nectar "
    "and pollen, build the wax comb and keep the hive at the right temperature. When a bee finds a good patch of "
    "flowers, it returns and performs a dance that tells the others the direction and the distance.",
    "The mountain road was narrow and full of sharp bends, so the driver slowed down and kept close to the rock "
    "wall. Far below, a lake shone in the afternoon light, and a small village of white houses sat at the water's "
    "edge. By the time they reached the pass, the air had grown cold and the first stars were out.",
)

# (prompt, answer): the answer continues the prompt directly (a leading space where a word follows).
CLOZE: tuple[tuple[str, str], ...] = (
    ("The capital of France is", " Paris"),
    ("The capital of Italy is", " Rome"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"),
    ("The capital of England is", " London"),
    ("The capital of Russia is", " Moscow"),
    ("The capital of Egypt is", " Cairo"),
    ("The largest planet in our solar system is", " Jupiter"),
    ("The planet closest to the Sun is", " Mercury"),
    ("Water is made of hydrogen and", " oxygen"),
    ("The chemical symbol for gold is", " Au"),
    ("The freezing point of water in degrees Celsius is", " 0"),
    ("The boiling point of water in degrees Celsius is", " 100"),
    ("There are seven days in a", " week"),
    ("There are twelve months in a", " year"),
    ("The first month of the year is", " January"),
    ("The last month of the year is", " December"),
    ("The opposite of hot is", " cold"),
    ("The opposite of up is", " down"),
    ("The colour of the sky on a clear day is", " blue"),
    ("The colour of grass is", " green"),
    ("Bees make", " honey"),
    ("Cows give us", " milk"),
    ("A baby cat is called a", " kitten"),
    ("A baby dog is called a", " puppy"),
    ("The Great Wall is in", " China"),
    ("The Eiffel Tower is in", " Paris"),
    ("The Statue of Liberty is in New York"
     " City, in the United", " States"),
    ("Romeo and Juliet was written by William", " Shakespeare"),
    ("The theory of relativity was developed by Albert", " Einstein"),
    ("The longest river in Africa is the", " Nile"),
    ("The currency of Japan is the", " yen"),
    ("The currency of the United Kingdom is the pound", " sterling"),
    ("One, two, three, four,", " five"),
    ("Monday, Tuesday, Wednesday,", " Thursday"),
    ("Spring, summer, autumn and", " winter"),
    ("The human heart pumps", " blood"),
    ("We breathe in", " oxygen"),
    ("The Moon orbits the", " Earth"),
    ("The Earth orbits the", " Sun"),
    ("Ice is frozen", " water"),
)
