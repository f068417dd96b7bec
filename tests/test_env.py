from helpers.env import EnvReport, detect, detect_host, library_versions


def test_detect_on_this_machine_reports_cpu_and_versions():
    report = detect()
    assert report.gpu_name is None and report.cuda is None and report.vram_gb == 0
    assert report.profile == "cpu"
    assert report.cpu_count >= 1 and report.ram_gb > 0
    assert report.versions["transformers"] == "5.17.0"
    assert report.versions["trl"] == "1.13.0"


def test_report_reads_well():
    text = str(detect())
    for label in ("host", "cpu", "gpu", "libraries", "profile"):
        assert label in text
    assert "none (CPU only)" in text


def test_report_of_a_gpu_machine():
    report = EnvReport(python="3.11", system="Linux x86_64", host="colab", cpu_count=2, ram_gb=12.7,
                       cuda="12.4", gpu_name="Tesla T4", vram_gb=14.7, compute_capability="7.5",
                       bf16=False, versions={"torch": "2.8.0", "unsloth": None}, profile="t4")
    text = str(report)
    assert "Tesla T4, 14.7 GB, compute 7.5, bf16 no" in text
    assert "missing   unsloth" in text


def test_missing_library_is_none():
    assert library_versions(("surely-not-a-package-xyz",)) == {"surely-not-a-package-xyz": None}


def test_detect_host():
    assert detect_host({"COLAB_RELEASE_TAG": "release-colab"}) == "colab"
    assert detect_host({"AutoDLContainerUUID": "abc"}) == "autodl"
