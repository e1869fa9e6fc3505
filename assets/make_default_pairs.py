"""Build the default word-pair sets (assets/pairs_trained.csv, assets/pairs_control.csv).

The pairs below were written by hand by the TLI Studio team from standard Swahili (Kiswahili
sanifu) vocabulary: one common English gloss per Swahili entry. Every Swahili string and every
English string is unique across both sets, so nearest-neighbour retrieval over the pool is well
defined. The control set is a stratified (by category) sample with a fixed seed. Run from the
project root:  python assets/make_default_pairs.py
"""

from __future__ import annotations

import csv
import sys
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_TOTAL, N_CONTROL, SEED = 686, 63, 2506

NOUNS = """
kichwa head; jicho eye; sikio ear; pua nose; mdomo mouth; jino tooth; ulimi tongue; shingo neck; bega shoulder;
mkono hand; kidole finger; kucha fingernail; kifua chest; tumbo belly; mgongo back; mguu leg; goti knee;
nywele hair; ngozi skin; damu blood; moyo heart; mfupa bone; uso face; ubongo brain; ini liver; figo kidney;
mapafu lungs; koo throat; kiuno waist; kisigino heel; paja thigh; kidevu chin; ndevu beard; shavu cheek;
jasho sweat; machozi tears; mate saliva; kope eyelash; nyusi eyebrows; kifundo cha mguu ankle;
mama mother; baba father; mtoto child; kaka brother; dada sister; bibi grandmother; babu grandfather;
mjomba uncle; shangazi aunt; binamu cousin; mume husband; mke wife; rafiki friend; jirani neighbour;
mgeni guest; mwalimu teacher; mwanafunzi student; mkulima farmer; mvuvi fisherman; fundi craftsman;
dereva driver; askari soldier; mfalme king; malkia queen; mwanamke woman; mwanamume man; msichana girl;
mvulana boy; mzee elder; kijana youth; mtu person; watu people; mwizi thief; mgonjwa patient;
mfanyabiashara trader; mwimbaji singer; mchezaji player; mwandishi writer; mhunzi blacksmith;
mchungaji shepherd; mjukuu grandchild; yatima orphan; adui enemy; mtumishi servant; kiongozi leader;
jeshi army; mwindaji hunter; seremala carpenter; mganga healer; mfanyakazi worker; abiria passenger;
mbwa dog; paka cat; ng'ombe cow; mbuzi goat; kondoo sheep; kuku chicken; bata duck; farasi horse; punda donkey;
simba lion; tembo elephant; twiga giraffe; kiboko hippopotamus; faru rhinoceros; pundamilia zebra; chui leopard;
fisi hyena; nyani baboon; tumbili monkey; sungura rabbit; panya rat; nyoka snake; mamba crocodile; samaki fish;
ndege bird; nyuki bee; mbu mosquito; inzi fly; sisimizi ant; buibui spider; kobe tortoise; chura frog;
nguruwe pig; ngamia camel; kipepeo butterfly; mende cockroach; nzige locust; popo bat; bundi owl; tai eagle;
kunguru crow; njiwa pigeon; kasuku parrot; jogoo rooster; mjusi lizard; konokono snail; nyati buffalo;
swala gazelle; mbweha jackal; nge scorpion; kaa crab; pweza octopus; papa shark; nyangumi whale; kiwavi caterpillar;
chakula food; maji water; mkate bread; wali cooked rice; mchele rice; nyama meat; yai egg; maziwa milk; chai tea;
kahawa coffee; sukari sugar; chumvi salt; mafuta oil; asali honey; ndizi banana; chungwa orange; embe mango;
nanasi pineapple; papai papaya; tikiti watermelon; nazi coconut; limau lemon; parachichi avocado; kiazi potato;
kitunguu onion; nyanya tomato; maharagwe beans; mahindi maize; ngano wheat; unga flour; pilipili pepper;
mboga vegetables; tunda fruit; siagi butter; jibini cheese; mchuzi stew; pombe alcohol; divai wine;
tangawizi ginger; kitunguu saumu garlic; mdalasini cinnamon; karanga peanuts; muhogo cassava; mtama sorghum;
ufuta sesame; tende dates; zabibu grapes; tufaha apple; pera guava; komamanga pomegranate;
kifungua kinywa breakfast; chakula cha mchana lunch; chakula cha jioni dinner;
nyumba house; chumba room; mlango door; dirisha window; kitanda bed; kiti chair; meza table; kikombe cup;
sahani plate; kijiko spoon; uma fork; kisu knife; sufuria pot; chupa bottle; ndoo bucket; ufunguo key; taa lamp;
shuka bedsheet; kioo mirror; saa clock; kitabu book; kalamu pen; karatasi paper; barua letter; picha picture;
nguo clothes; shati shirt; suruali trousers; kiatu shoe; kofia hat; mkoba bag; sanduku box; kamba rope;
sabuni soap; ukuta wall; paa roof; sakafu floor; ngazi ladder; jiko kitchen; choo toilet; bustani garden;
uzio fence; kufuli padlock; sindano needle; uzi thread; mkasi scissors; nyundo hammer; msumari nail; jembe hoe;
shoka axe; panga machete; fagio broom; mkeka mat; kikapu basket; gunia sack; pesa money; sarafu coin;
simu telephone; mshumaa candle; kiberiti matches; moto fire; moshi smoke; jivu ash; kuni firewood;
makaa charcoal; mto river; ziwa lake; bahari sea; mlima mountain; kilima hill; msitu forest; mti tree; jani leaf;
ua flower; nyasi grass; mwamba rock; jiwe stone; mchanga sand; udongo soil; ardhi land; dunia world;
kisiwa island; pwani coast; jangwa desert; bonde valley; pango cave; chemchemi spring; tawi branch; mzizi root;
mbegu seed; gome bark; mwanzi bamboo; miwa sugarcane; pamba cotton; hewa air; wimbi wave; barafu ice;
ukame drought; mafuriko flood; tetemeko la ardhi earthquake; jua sun; mwezi moon; nyota star; anga sky;
wingu cloud; mvua rain; upepo wind; theluji snow; radi thunder; umeme lightning; ukungu fog; joto heat;
mji town; jiji city; kijiji village; shule school; soko market; duka shop; kanisa church; msikiti mosque;
barabara road; njia path; daraja bridge; uwanja field; bandari harbour; kituo station; nchi country;
mkoa region; mpaka border; shamba farm; nyumbani home; chuo kikuu university; maktaba library; gereza prison;
mahakama court; mkahawa restaurant; kiwanda factory; ufukwe beach; mtaa street; uwanja wa ndege airport;
gari car; meli ship; mashua boat; pikipiki motorcycle; mtumbwi canoe; gurudumu wheel; safari journey;
siku day; usiku night; asubuhi morning; mchana afternoon; jioni evening; wiki week; mwaka year; dakika minute;
wakati time; karne century; Jumatatu Monday; Jumanne Tuesday; Jumatano Wednesday; Alhamisi Thursday;
Ijumaa Friday; Jumamosi Saturday; Jumapili Sunday;
upendo love; amani peace; furaha joy; huzuni sadness; hasira anger; hofu fear; uhuru freedom; haki justice;
ukweli truth; uongo lie; afya health; ugonjwa disease; maisha life; kifo death; ndoto dream; wazo idea;
swali question; jibu answer; neno word; lugha language; hadithi story; wimbo song; ngoma drum; mchezo game;
kazi work; elimu education; akili mind; nguvu strength; umri age; jina name; sauti voice; rangi colour;
bei price; habari news; ujumbe message; sheria law; serikali government; siasa politics; uchaguzi election;
vita war; utamaduni culture; dini religion; Mungu God; imani faith; matumaini hope; subira patience;
aibu shame; heshima respect; zawadi gift; ahadi promise; msaada aid; tatizo problem; mkutano meeting;
sherehe celebration; harusi wedding; mazishi funeral; likizo holiday; njaa hunger; kiu thirst; maumivu pain;
homa fever; dawa medicine; kelele noise; kimya silence; mwanga light; giza darkness; kivuli shadow;
harufu smell; ladha flavour; uzito weight; urefu length; upana width; kina depth; umbali distance; mwisho end;
mwanzo beginning; katikati middle; nusu half; robo quarter; mpira ball; kamusi dictionary; ramani map;
bendera flag; ndugu sibling; urafiki friendship; ndoa marriage; kumbukumbu memory; siri secret; somo lesson;
mtihani examination; ushindi victory; hatari danger; faida profit; deni debt; mshahara salary; kodi tax;
biashara business; utajiri wealth; umaskini poverty; kijiko kikubwa tablespoon
"""

VERBS = """
kula eat; kunywa drink; kulala sleep; kuamka wake up; kukimbia run; kutembea walk; kusoma read; kuandika write;
kusema say; kuongea talk; kusikia hear; kusikiliza listen; kuona see; kuangalia look; kutazama watch;
kupenda like; kuchukia hate; kujua know; kufikiri think; kuelewa understand; kusahau forget; kukumbuka remember;
kufundisha teach; kujifunza learn; kuuliza ask; kujibu reply; kuimba sing; kucheza play; kucheka laugh;
kulia cry; kutabasamu smile; kupika cook; kuosha wash; kusafisha clean; kufagia sweep; kujenga build;
kuvunja break; kufungua open; kufunga close; kuingia enter; kutoka exit; kuja come; kwenda go; kurudi return;
kufika arrive; kuondoka depart; kukaa sit; kusimama stand; kuanguka fall; kuruka jump; kuogelea swim;
kupanda climb; kulima cultivate; kuvuna harvest; kununua buy; kuuza sell; kulipa pay; kuiba steal;
kupokea receive; kuleta bring; kubeba carry; kushika hold; kutupa throw; kuvuta pull; kusukuma push;
kukata cut; kushona sew; kuchora draw; kupiga hit; kuua kill; kufa die; kuzaliwa be born; kuishi live;
kusaidia help; kutafuta search; kupata get; kupoteza lose; kushinda win; kushindwa fail; kuanza begin;
kumaliza finish; kusubiri wait; kuamini believe; kuomba request; kusali pray; kusamehe forgive; kuoa marry;
kutumia use; kufanya do; kutengeneza repair; kuumba create; kupima measure; kuhesabu count; kushuka descend;
kuzama sink; kuelea float; kuchoma burn; kuwasha switch on; kuzima extinguish; kupumua breathe; kukohoa cough;
kunusa sniff; kuonja taste; kugusa touch; kunyamaza keep quiet; kupumzika rest; kusafiri travel; kupanga plan;
kuchagua choose; kupiga kura vote; kuhama migrate; kujaribu try; kuweza be able; kutaka want; kuhitaji need;
kulinda protect; kuokoa rescue; kufuata follow; kuongoza lead; kuficha hide; kugawa divide; kuongeza add;
kupunguza reduce; kubadilisha change; kuchelewa be late; kuharakisha hurry; kulipuka explode;
kushangaa be surprised; kuogopa be afraid; kuvaa wear; kuvua undress; kukopa borrow; kukopesha lend;
kukutana meet; kuzungumza converse; kutuma send; kukaanga fry; kuchemsha boil; kuoka bake; kunyoa shave;
kuchana comb; kufuma weave; kuchimba dig; kumwaga pour; kujaza fill; kumwagilia irrigate; kuuma bite;
kunyonya suck; kutafuna chew; kumeza swallow; kutapika vomit; kuugua fall ill; kupona recover; kukua grow;
kuoza rot; kuamua decide; kukataa refuse; kukubali accept; kualika invite; kushukuru thank; kulinganisha compare;
kuhifadhi preserve; kuonyesha show; kueleza explain; kuchapisha print; kuvumilia endure; kusahihisha correct;
kucheza ngoma dance; kufukuza chase; kukamata catch; kufuga raise livestock; kuwinda hunt; kuvua samaki go fishing;
kufaulu succeed; kuhudhuria attend; kuandaa prepare; kupanda mti plant a tree
"""

ADJECTIVES = """
kubwa big; ndogo small; ndefu long; fupi short; nzuri good; mbaya bad; chafu dirty; mpya new; kuukuu old;
kali sharp; tamu sweet; chungu bitter; chachu sour; baridi cold; nzito heavy; nyepesi lightweight; nene thick;
nyembamba thin; pana wide; nyingi many; chache few; ngumu hard; rahisi easy; ghali expensive; tupu empty;
nzima whole; bovu rotten; hodari brave; mvivu lazy; mwerevu clever; mjinga foolish; tajiri rich; maskini poor;
changa young; kavu dry; mbichi raw; mbivu ripe; laini soft; wazi clear; tulivu calm; muhimu important;
sawa equal; tofauti different; kamili complete; bora best; mwaminifu faithful; mkarimu generous; mpole gentle;
kipofu blind; kiziwi deaf; bubu mute; mnene fat; mrefu tall; nyeupe white; nyeusi black; nyekundu red;
kijani green; njano yellow; kahawia brown; zambarau purple; kijivu grey; waridi pink; safi kabisa spotless;
ya moto hot; ya kweli genuine; mwenye furaha happy; mwenye huzuni sad; mwenye njaa hungry;
mchangamfu cheerful; mkaidi stubborn; mwoga cowardly; mkweli truthful; mchoyo stingy; mnyenyekevu humble
"""

NUMBERS = """
sifuri zero; moja one; mbili two; tatu three; nne four; tano five; sita six; saba seven; nane eight; tisa nine;
kumi ten; kumi na moja eleven; kumi na mbili twelve; kumi na tatu thirteen; kumi na nne fourteen;
kumi na tano fifteen; kumi na sita sixteen; kumi na saba seventeen; kumi na nane eighteen; kumi na tisa nineteen;
ishirini twenty; ishirini na moja twenty-one; thelathini thirty; arobaini forty; hamsini fifty; sitini sixty;
sabini seventy; themanini eighty; tisini ninety; mia moja one hundred; mia mbili two hundred;
mia tano five hundred; elfu moja one thousand; elfu mbili two thousand; elfu kumi ten thousand;
laki moja one hundred thousand; ya kwanza first; ya pili second; ya tatu third; ya nne fourth; ya mwisho last;
mara moja once; mara mbili twice
"""

PHRASES = """
habari za asubuhi good morning; habari za mchana good afternoon; habari za jioni good evening;
usiku mwema good night; asante thank you; asante sana thank you very much; karibu welcome;
karibu sana you are very welcome; tafadhali please; samahani excuse me; pole sorry; kwa heri goodbye;
tutaonana see you later; tuonane kesho see you tomorrow; jina lako nani what is your name; jina langu ni my name is;
unatoka wapi where are you from; habari yako how are you; hujambo are you well; sijambo I am well;
nzuri sana very good; ndiyo yes; hapana no; sawa sawa all right; sielewi I do not understand; sijui I do not know;
ninakupenda I love you; unasema Kiingereza do you speak English; ninaomba msaada I ask for help;
bei gani how much is it; ni saa ngapi what time is it; choo kiko wapi where is the toilet; ninaumwa I am sick;
nina njaa I am hungry; nina kiu I am thirsty; nimechoka I am tired; safari njema have a good journey;
lala salama sleep well; heri ya siku ya kuzaliwa happy birthday; heri ya mwaka mpya happy new year;
hongera congratulations; hakuna matata no problem; pole pole take it easy; kila siku every day;
bila shaka of course; siku njema have a nice day; karibu tena come again; maji ya kunywa drinking water;
nataka maji I want water; ninakwenda nyumbani I am going home; mimi ni mwalimu I am a teacher;
chakula ni kitamu the food is delicious; mvua inanyesha it is raining; jua linawaka the sun is shining;
ninapenda kusoma I like to read; twende pamoja let us go together; ngoja kidogo wait a moment;
sema polepole speak slowly; rudia tafadhali repeat please
"""

ADVERBS = """
sana very; haraka quickly; polepole slowly; pamoja together; tena again; pia also; bado still; tayari already;
daima always; kamwe never; mara nyingi often; mara kwa mara from time to time; ndani inside; nje outside;
juu above; chini below; mbele forward; nyuma behind; mbali far; vizuri well; kidogo a little; mapema early;
baadaye later; kabla before; baada after; sasa now; zamani long ago; ghafla suddenly; hasa especially;
kweli really; labda maybe; tu only; hata even; leo today; kesho tomorrow; jana yesterday;
juzi the day before yesterday; kesho kutwa the day after tomorrow; hapa here; pale there; wapi where;
lini when; kwa nini why; vipi how; ngapi how many
"""

PRONOUNS = """
mimi I; wewe you; yeye he or she; sisi we; ninyi you all; wao they; nini what; nani who; hii this; ile that;
kila every; wote all; mwingine another
"""

OTHER = """
lakini but; na and; au or; kwa sababu because; kama if; ingawa although; ili so that; kisha then;
bila without; kuhusu about; kwa ajili ya for the sake of; mpaka sasa until now
"""

SECTIONS = {"noun": NOUNS, "verb": VERBS, "adjective": ADJECTIVES, "number": NUMBERS, "phrase": PHRASES,
            "adverb": ADVERBS, "pronoun": PRONOUNS, "other": OTHER}


# Multi-word Swahili entries need an explicit boundary; everything else is "one Swahili word, then English".
MULTI_SW = [
    "kitunguu saumu", "chakula cha mchana", "chakula cha jioni", "kifungua kinywa", "tetemeko la ardhi",
    "chuo kikuu", "uwanja wa ndege", "kijiko kikubwa", "kupiga kura", "kucheza ngoma", "kuvua samaki",
    "kupanda mti", "safi kabisa", "ya moto", "ya kweli", "mwenye furaha", "mwenye huzuni",
    "mwenye njaa", "kifundo cha mguu", "kumi na moja", "kumi na mbili", "kumi na tatu", "kumi na nne",
    "kumi na tano", "kumi na sita",
    "kumi na saba", "kumi na nane", "kumi na tisa", "ishirini na moja", "mia moja", "mia mbili", "mia tano",
    "elfu moja", "elfu mbili", "elfu kumi", "laki moja", "ya kwanza", "ya pili", "ya tatu", "ya nne", "ya mwisho",
    "mara moja", "mara mbili", "habari za asubuhi", "habari za mchana", "habari za jioni", "usiku mwema",
    "asante sana", "karibu sana", "kwa heri", "tuonane kesho", "jina lako nani", "jina langu ni",
    "unatoka wapi", "habari yako", "nzuri sana", "sawa sawa", "unasema Kiingereza", "ninaomba msaada",
    "bei gani", "ni saa ngapi", "choo kiko wapi", "nina njaa", "nina kiu", "safari njema", "lala salama",
    "heri ya siku ya kuzaliwa", "heri ya mwaka mpya", "hakuna matata", "pole pole", "kila siku", "bila shaka",
    "siku njema", "karibu tena", "maji ya kunywa", "nataka maji", "ninakwenda nyumbani", "mimi ni mwalimu",
    "chakula ni kitamu", "mvua inanyesha", "jua linawaka", "ninapenda kusoma", "twende pamoja", "ngoja kidogo",
    "sema polepole", "rudia tafadhali", "mara nyingi", "mara kwa mara", "kesho kutwa", "kwa nini",
    "kwa sababu", "kwa ajili ya", "mpaka sasa",
]

def pairs_from_sections() -> list[dict]:
    multi = sorted(MULTI_SW, key=len, reverse=True)
    rows = []
    for category, text in SECTIONS.items():
        for item in text.replace("\n", " ").split(";"):
            item = " ".join(item.split())
            if not item:
                continue
            sw = next((m for m in multi if item.startswith(m + " ")), None)
            if sw is None:
                sw, en = item.split(" ", 1)
            else:
                en = item[len(sw) + 1:]
            rows.append({"swahili": unicodedata.normalize("NFC", sw), "english": unicodedata.normalize("NFC", en),
                         "category": category})
    return rows


def check(rows: list[dict]) -> None:
    for key in ("swahili", "english"):
        seen = {}
        for r in rows:
            k = r[key].casefold()
            if k in seen:
                raise SystemExit(f"duplicate {key} {r[key]!r}: {seen[k]} and {r}")
            seen[k] = r
    for r in rows:
        if r["swahili"].casefold() == r["english"].casefold():
            raise SystemExit(f"identical surface form: {r}")


def stratified_control(rows: list[dict], n_control: int, seed: int) -> set[int]:
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_cat.setdefault(r["category"], []).append(i)
    quotas = {c: n_control * len(ix) / len(rows) for c, ix in by_cat.items()}
    take = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: quotas[c] - take[c], reverse=True)[: n_control - sum(take.values())]:
        take[c] += 1
    chosen = set()
    for c in sorted(by_cat):
        chosen.update(rng.choice(by_cat[c], take[c], replace=False).tolist())
    return chosen


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["swahili", "english", "category"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> int:
    rows = pairs_from_sections()
    check(rows)
    if len(rows) < N_TOTAL:
        raise SystemExit(f"only {len(rows)} pairs; need {N_TOTAL}")
    rng = np.random.default_rng(SEED)
    keep = sorted(rng.choice(len(rows), N_TOTAL, replace=False)) if len(rows) > N_TOTAL else range(len(rows))
    rows = [rows[i] for i in keep]
    control_idx = stratified_control(rows, N_CONTROL, SEED)
    trained = [r for i, r in enumerate(rows) if i not in control_idx]
    control = [r for i, r in enumerate(rows) if i in control_idx]
    write(HERE / "pairs_trained.csv", trained)
    write(HERE / "pairs_control.csv", control)
    counts = {}
    for name, part in (("trained", trained), ("control", control)):
        counts[name] = {}
        for r in part:
            counts[name][r["category"]] = counts[name].get(r["category"], 0) + 1
        print(name, len(part), dict(sorted(counts[name].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
