"""The one student-name rule (dfmscd.names), as the engine and the API both apply it."""

import pytest

from dfmscd.names import default_student_name, is_valid_student_name


@pytest.mark.parametrize("name", ["resnet8", "a", "tv_resnet18", "mobile-1.0", "x" * 64, "_a", "-a"])
def test_valid_names(name: str) -> None:
    assert is_valid_student_name(name)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "naïve", "x" * 65, "a b", "a\0"])
def test_invalid_names(name: str) -> None:
    assert not is_valid_student_name(name)


def test_default_name_is_valid_for_namespaced_architectures() -> None:
    assert default_student_name("tv/resnet18") == "tv_resnet18"
    assert default_student_name("timm/resnet10t") == "timm_resnet10t"
    assert is_valid_student_name(default_student_name("timm/resnet10t"))
