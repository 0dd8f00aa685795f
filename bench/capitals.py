"""The control task of the selection benchmark: capital cities, where majority vote already works.

The embedded 270M model names the capital of a well-known country right in most samples, so
the vote is usually right and there is little for a learned selector to add: what this task
measures is that learned selection does no harm where agreement suffices. Countries whose
capital has common variant names, is disputed or equals the country's name are left out.

The answer is the first line's leading words ("Paris", "Paris.", "Paris <s>..." and "The capital
of France is Paris" all answer Paris); accents and case are ignored, so "Brasilia" answers
Brasília. Routes extract it with the same pattern (`ANSWER_PATTERN`, a self-consistency pattern).
"""

from __future__ import annotations

import random
import re
import unicodedata

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
    ("the Czech Republic", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Iceland", "Reykjavik"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"),
    ("Estonia", "Tallinn"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Albania", "Tirana"),
    ("Cyprus", "Nicosia"), ("Malta", "Valletta"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"), ("Oman", "Muscat"), ("Afghanistan", "Kabul"),
    ("Pakistan", "Islamabad"), ("India", "New Delhi"), ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("Malaysia", "Kuala Lumpur"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("South Korea", "Seoul"),
    ("North Korea", "Pyongyang"), ("Uzbekistan", "Tashkent"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Fiji", "Suva"), ("Canada", "Ottawa"), ("Cuba", "Havana"), ("Jamaica", "Kingston"),
    ("Honduras", "Tegucigalpa"), ("Nicaragua", "Managua"), ("Costa Rica", "San José"), ("Colombia", "Bogotá"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Uruguay", "Montevideo"), ("Paraguay", "Asunción"), ("Brazil", "Brasília"),
    ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Libya", "Tripoli"),
    ("Sudan", "Khartoum"), ("Ethiopia", "Addis Ababa"), ("Kenya", "Nairobi"), ("Uganda", "Kampala"),
    ("Rwanda", "Kigali"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Senegal", "Dakar"),
    ("Mali", "Bamako"), ("Niger", "Niamey"), ("Cameroon", "Yaoundé"), ("Angola", "Luanda"),
    ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"), ("Mozambique", "Maputo"), ("Madagascar", "Antananarivo"),
    ("Namibia", "Windhoek"), ("Botswana", "Gaborone"), ("Somalia", "Mogadishu"), ("Liberia", "Monrovia"),
    ("Sierra Leone", "Freetown"), ("Guinea", "Conakry"), ("Gabon", "Libreville"), ("Malawi", "Lilongwe"),
    ("Switzerland", "Bern"), ("Georgia", "Tbilisi"), ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"),
    ("Belarus", "Minsk"), ("Bosnia and Herzegovina", "Sarajevo"), ("Montenegro", "Podgorica"), ("North Macedonia", "Skopje"),
    ("Kyrgyzstan", "Bishkek"), ("Tajikistan", "Dushanbe"), ("Bhutan", "Thimphu"), ("Bahrain", "Manama"),
    ("the United Kingdom", "London"), ("Eritrea", "Asmara"),
)
# The first line's leading words (letters, spaces, hyphens, apostrophes), after an optional
# "The capital (of X) is".
ANSWER_PATTERN = r"^\s*(?:(?i:the\s+capital\s+(?:of\s+[^\n]*?\s+)?is)\s+)?([^\W\d_]+(?:[ '\-][^\W\d_]+)*)"
_ANSWER = re.compile(ANSWER_PATTERN)


def question(country: str) -> str:
    return f"What is the capital of {country}?"


def items(seeds: int) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(id, question, answer, shots) for every country × `seeds` few-shot sets of three others."""
    out = []
    for seed in range(seeds):
        rng = random.Random(2000 + seed)
        for country, capital in CAPITALS:
            others = rng.sample([c for c in CAPITALS if c[0] != country], 3)
            shots = [(question(c), a) for c, a in others]
            out.append((f"capitals-s{seed}-{country}", question(country), capital, shots))
    return out


def normalized(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(plain.lower().split())


def score(text: str, capital: str) -> float:
    found = _ANSWER.match(text)
    return float(found is not None and normalized(found.group(1)) == normalized(capital))
