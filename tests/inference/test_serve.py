"""``faceops serve`` as a real process on loopback with the pretrained models and the LFW photos:
its answers are batch identify's, bad input is refused in one line, the token is required, the
gallery changes through the API (and from outside) reach the next request, and concurrent requests
share micro-batches."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from inference.identify import UNKNOWN, identify
from tests.harness.process import wait_for
from tests.harness.serve import running_serve

TOKEN = "serve-test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 120  # seconds a request may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    """A server on a copy of the built gallery, with a token and a 2 MB body limit."""
    root = tmp_path_factory.mktemp("serve")
    gallery = Path(shutil.copytree(built[0], root / "db"))
    with running_serve(gallery, root / "serve.log", "--token-env", "SERVE_TOKEN", "--max-bytes", str(2 << 20),
                       env={"SERVE_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def probes(split, model_dir, tmp_path_factory) -> Path:
    """A few probe photos: two of gallery people, one of a person left out, and a group photo."""
    folder = tmp_path_factory.mktemp("serve-probes")
    people = sorted(p for p in (split / "probe").iterdir())
    for person in (people[0], people[3], people[-1]):
        photo = sorted(person.glob("*.jpg"))[0]
        (folder / f"{person.name}.jpg").symlink_to(photo.resolve())
    (folder / "players.jpg").symlink_to((model_dir / "players.jpg").resolve())
    return folder


def post(server, photo: Path, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/identify", data=photo.read_bytes(), timeout=TIMEOUT,
                         headers={"Content-Type": "image/jpeg", **AUTH}, **kwargs)


def test_answers_are_batch_identify_answers(served, probes, built, models, tmp_path):
    summary = identify(probes, built[0], tmp_path / "report", models)
    rows = [json.loads(line) for line in (tmp_path / "report" / "report.jsonl").read_text().splitlines()]
    assert summary["faces"] > len(list(probes.iterdir())), "the group photo has several faces"
    for photo in sorted(probes.iterdir()):
        answer = post(served, photo)
        assert answer.status_code == 200, answer.text
        faces = answer.json()["faces"]
        expected = [r for r in rows if r["image"] == photo.name and r["status"] == "ok"]
        assert len(faces) == len(expected) > 0
        for face, row in zip(faces, expected):
            assert face["box"] == pytest.approx(row["box"], abs=0.11)
            assert face["person"] == (None if row["person"] == UNKNOWN else row["person"])
            assert face["known"] == (row["person"] != UNKNOWN)
            assert face["score"] == pytest.approx(row["similarity"], abs=2e-4)
    named = {photo.stem: post(served, photo).json()["faces"][0]["person"] for photo in probes.iterdir()}
    gallery_people = [p["name"] for p in json.loads((built[0] / "gallery.json").read_text())["people"]]
    for stem, person in named.items():
        if stem != "players":  # the largest face of each LFW photo is its person's, or unknown when left out
            assert person == (stem if stem in gallery_people else None), named


def test_multipart_upload_gives_the_same_answer(served, probes):
    photo = sorted(probes.iterdir())[0]
    raw = post(served, photo).json()
    form = requests.post(f"{served.url}/identify", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                         headers=AUTH, timeout=TIMEOUT).json()
    assert [f["person"] for f in form["faces"]] == [f["person"] for f in raw["faces"]]
    assert form["gallery_revision"] == raw["gallery_revision"] == 1


def refused(response: requests.Response, status: int) -> str:
    """The one-line reason of a refusal, checked to hold no traceback and no path."""
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    assert "\n" not in reason and "Traceback" not in reason and "/tmp" not in reason and "/work" not in reason
    return reason


def huge_jpeg(photo: Path, side: int) -> bytes:
    """``photo``'s bytes with its start-of-frame header claiming ``side`` x ``side`` pixels."""
    data = bytearray(photo.read_bytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data[i + 5:i + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def test_bad_input_is_refused_in_one_line(served, probes):
    photo = sorted(probes.iterdir())[0]
    url, jpeg = f"{served.url}/identify", {"Content-Type": "image/jpeg", **AUTH}
    assert "not a JPEG or PNG" in refused(requests.post(url, data=b"hello", headers=jpeg, timeout=TIMEOUT), 400)
    truncated = photo.read_bytes()[:600]
    assert "not a decodable image" in refused(requests.post(url, data=truncated, headers=jpeg, timeout=TIMEOUT), 400)
    assert "image/jpeg" in refused(requests.post(url, data=photo.read_bytes(), timeout=TIMEOUT,
                                                 headers={"Content-Type": "text/plain", **AUTH}), 400)
    assert "'image'" in refused(requests.post(url, files={"photo": ("a.jpg", photo.read_bytes())}, headers=AUTH,
                                              timeout=TIMEOUT), 400)
    assert "over the limit" in refused(requests.post(url, data=b"\xff\xd8" + bytes(3 << 20), headers=jpeg,
                                                     timeout=TIMEOUT), 413)
    bomb = huge_jpeg(photo, 60000)  # 3.6 gigapixels declared in a file of a few KB
    assert len(bomb) < 100_000
    assert "60000x60000" in refused(requests.post(url, data=bomb, headers=jpeg, timeout=TIMEOUT), 413)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (50000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    assert "50000x50000" in refused(requests.post(url, data=png, timeout=TIMEOUT,
                                                  headers={"Content-Type": "image/png", **AUTH}), 413)
    assert post(served, photo).status_code == 200, "the server still answers"


def test_token_is_required_except_for_health_and_page(served, probes):
    photo = sorted(probes.iterdir())[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = requests.post(f"{served.url}/identify", data=photo.read_bytes(), timeout=TIMEOUT,
                               headers={"Content-Type": "image/jpeg", **headers})
        refused(answer, 401)
    assert requests.get(f"{served.url}/people", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{served.url}/metrics", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{served.url}/healthz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{served.url}/", timeout=TIMEOUT).status_code == 200
    assert TOKEN not in served.log.read_text()


def test_concurrent_requests_share_batches_and_metrics_count_them(served, probes):
    photos = sorted(probes.iterdir())
    alone = {p.name: post(served, p).json()["faces"] for p in photos}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: (p.name, post(served, p)), photos * 8))
    for name, answer in answers:
        assert answer.status_code == 200
        assert [f["person"] for f in answer.json()["faces"]] == [f["person"] for f in alone[name]]
    text = requests.get(f"{served.url}/metrics", headers=AUTH, timeout=TIMEOUT).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["faceops_serve_largest_batch"] > 1
    assert values["faceops_serve_batches_total"] < values["faceops_serve_photos_total"]
    assert values['faceops_serve_requests_total{method="POST",path="/identify",status="200"}'] >= 32
    assert values['faceops_serve_request_seconds_count{path="/identify"}'] >= 32
    assert values["faceops_serve_faces_total"] >= values["faceops_serve_photos_total"]
    assert values['faceops_serve_errors_total{path="/identify",status="401"}'] >= 0
    assert "# TYPE faceops_serve_request_seconds histogram" in text


def test_people_changes_make_revisions_used_by_the_next_request(gallery_copy, split, tmp_path):
    from inference import gallery_store
    from inference.gallery import remove_from_gallery

    person = sorted(p.name for p in (split / "gal").iterdir())[0]
    probe = sorted((split / "probe" / person).glob("*.jpg"))[0]
    with running_serve(gallery_copy, tmp_path / "serve.log", "--reload-every", "0.5") as server:
        def ask() -> dict:
            answer = requests.post(f"{server.url}/identify", data=probe.read_bytes(), timeout=TIMEOUT,
                                   headers={"Content-Type": "image/jpeg"})
            assert answer.status_code == 200, answer.text
            return answer.json()

        people = requests.get(f"{server.url}/people", timeout=TIMEOUT).json()
        assert len(people["people"]) == 8 and people["gallery_revision"] == 1
        assert ask()["faces"][0]["person"] == person

        removed = requests.delete(f"{server.url}/people/{person}", timeout=TIMEOUT).json()
        assert removed["removed"] == 5 and removed["gallery_revision"] == 2
        assert gallery_store.load(gallery_copy).manifest["revision"] == 2
        after = ask()
        assert after["gallery_revision"] == 2 and after["faces"][0]["person"] != person
        assert requests.delete(f"{server.url}/people/{person}", timeout=TIMEOUT).status_code == 404

        photos = sorted((split / "gal" / person).glob("*.jpg"))
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        added = requests.post(f"{server.url}/people/{person}", files=files, timeout=TIMEOUT).json()
        assert added["added"] == 5 and added["gallery_revision"] == 3
        assert ask()["faces"][0]["person"] == person
        assert refused(requests.post(f"{server.url}/people/{person}", data=b"text", timeout=TIMEOUT,
                                     headers={"Content-Type": "text/plain"}), 400)

        remove_from_gallery(gallery_copy, [person])  # a revision published by someone else
        wait_for(lambda: ask()["gallery_revision"] == 4, timeout=60, what="revision 4 served")
        assert ask()["faces"][0]["person"] != person


def test_gallery_on_s3_is_reloaded_when_a_revision_is_published(built, s3_server, s3_bucket, split, tmp_path):
    from inference.gallery import remove_from_gallery
    from jobs.core import storage

    uri = f"s3://{s3_bucket}/galleries/lfw"
    storage.upload(built[0], uri, progress=False)
    person = sorted(p.name for p in (split / "gal").iterdir())[1]
    with running_serve(uri, tmp_path / "serve.log", "--reload-every", "0.5", env=s3_server.env()) as server:
        def names() -> list[str]:
            return [p["name"] for p in requests.get(f"{server.url}/people", timeout=TIMEOUT).json()["people"]]

        assert person in names()
        remove_from_gallery(uri, [person])
        wait_for(lambda: person not in names(), timeout=60, what="the S3 gallery's new revision served")
        assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT).json()["gallery_revision"] == 2


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's, from setup-dev.sh
PAGE_SECONDS = 120  # the page's answer on a loaded machine


@pytest.fixture
def browser(tmp_path):
    """Debian's headless chromium driven through its chromedriver (nothing is downloaded)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup-dev.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_draws_boxes_and_names_of_a_dropped_photo(served, browser, probes, built):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gallery_people = [p["name"] for p in json.loads((built[0] / "gallery.json").read_text())["people"]]
    photo = next(p for p in sorted(probes.iterdir()) if p.stem in gallery_people)
    browser.get(f"{served.url}/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(photo.resolve()))
    WebDriverWait(browser, PAGE_SECONDS).until(lambda d: d.execute_script("return document.body.dataset.done") == "1")
    labels = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#faces li")]
    assert labels and labels[0].startswith(photo.stem + " "), labels
    assert browser.find_element(By.CSS_SELECTOR, "#faces li").get_attribute("class") == "known"
    canvas = browser.find_element(By.ID, "photo")
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (250, 250)
    # The box is drawn: the pixel on the top edge of the first face's box is the known colour (green).
    box = post(served, photo).json()["faces"][0]["box"]
    x, y = int((box[0] + box[2]) / 2), int(box[1])
    pixel = browser.execute_script(f"return Array.from(document.getElementById('photo').getContext('2d')"
                                   f".getImageData({x}, {y}, 1, 1).data)")
    assert pixel[1] > 120 and pixel[0] < 80 and pixel[2] < 80, pixel

    browser.find_element(By.ID, "token").clear()
    browser.execute_script("document.body.dataset.done = ''")
    browser.find_element(By.ID, "file").send_keys(str(photo.resolve()))
    WebDriverWait(browser, PAGE_SECONDS).until(lambda d: "401" in d.find_element(By.ID, "status").text)
