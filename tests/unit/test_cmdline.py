"""The command-line parser: the kernel's tokenising rules, typing, problems."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.services import ADMIN_EMAIL, SSH_KEY
from hooks.services import HOOK as SERVICES
from initpy.runtime import cmdline
from initpy.runtime.driver import BREAK, CORE_PARAMETERS
from initpy.runtime.handoff import EXEC
from initpy.runtime.rescue import DEBUG, RESCUE_POLICY, RESCUE_TIMEOUT


def parse(text: str) -> cmdline.BootConfig:
    return cmdline.parse(text, [*CORE_PARAMETERS, *SERVICES.parameters])


def test_spaces_separate_and_quotes_group() -> None:
    config = parse('console=ttyS0 buildos.ssh_key="ssh-ed25519 AAAAC3Nza user@host" quiet')
    assert config.value(SSH_KEY) == "ssh-ed25519 AAAAC3Nza user@host"
    assert config.raw["console"] == "ttyS0"
    assert config.raw["quiet"] is None
    assert config.problems == ()


def test_kernel_doc_example_quoted_whole_parameter() -> None:
    # Documentation/admin-guide/kernel-parameters.rst: param="spaces in here"
    # and the form where the quote opens before the name.
    pairs, _, problems = cmdline.tokenize('param="spaces in here" "other=a b"')
    assert pairs == [("param", "spaces in here"), ("other", "a b")]
    assert problems == []


def test_flag_without_value_and_last_one_wins() -> None:
    config = parse("initpy.debug initpy.rescue=reboot initpy.rescue=poweroff")
    assert config.value(DEBUG) is True
    assert config.value(RESCUE_POLICY) == "poweroff"


def test_dashes_and_underscores_are_the_same() -> None:
    # kernel-parameters.rst: "hyphens (dashes) and underscores are equivalent"
    config = parse("initpy.rescue-timeout=30")
    assert config.value(RESCUE_TIMEOUT) == 30.0


def test_everything_after_double_dash_belongs_to_init() -> None:
    config = parse("initpy.debug -- initpy.rescue=reboot single")
    assert config.value(DEBUG) is True
    assert config.value(RESCUE_POLICY) == "shell"
    assert config.init_args == ("initpy.rescue=reboot", "single")


def test_words_after_double_dash_are_unquoted_as_the_kernel_passes_them() -> None:
    # set_init_arg: next_arg's quoting, quotes dropped, key=value joined again;
    # only the first -- ends the parameters.
    config = parse('initpy.debug -- "a b" x="c d" "y=e f" --')
    assert config.init_args == ("a b", "x=c d", "y=e f", "--")


def test_value_may_contain_equals() -> None:
    config = parse("initpy.exec=/bin/x=y")
    assert config.value(EXEC) == "/bin/x=y"


def test_defaults_when_absent() -> None:
    config = parse("console=ttyS0")
    assert config.value(RESCUE_POLICY) == "shell"
    assert config.value(EXEC) is None
    assert config.value(RESCUE_TIMEOUT) is None
    assert config.value(DEBUG) is False


def test_unknown_own_parameter_is_a_warning_naming_it() -> None:
    config = parse("buildos.smtp_rely=mail.example.org foo.bar=1")
    assert len(config.problems) == 1
    assert "buildos.smtp_rely" in config.problems[0]
    assert "buildos.smtp_relay" in config.problems[0]  # the known ones are listed


def test_bad_values_are_problems_with_what_was_expected() -> None:
    config = parse(
        "initpy.rescue=explode initpy.rescue_timeout=soon initpy.exec=sbin/init "
        "buildos.admin_email=nobody initpy.debug=maybe initpy.break=a;b"
    )
    problems = " | ".join(config.problems)
    assert "expected one of shell|reboot|poweroff, got 'explode'" in problems
    assert "expected seconds" in problems and "'soon'" in problems
    assert "expected an absolute path, got 'sbin/init'" in problems
    assert "expected an email address" in problems
    assert "expected a flag" in problems
    assert "expected a state name" in problems
    assert config.value(RESCUE_POLICY) == "shell"  # bad value: the default stays
    assert config.value(ADMIN_EMAIL) is None


def test_bad_ssh_key_names_the_problem() -> None:
    config = parse("buildos.ssh_key=AAAAB3NzaC1yc2E")
    assert config.value(SSH_KEY) is None
    assert any("expected an OpenSSH public key" in p for p in config.problems)


def test_unclosed_quote_is_a_problem_and_runs_to_the_end() -> None:
    config = parse('buildos.ssh_key="ssh-rsa AAAA user initpy.debug')
    assert any("unclosed double quote" in p for p in config.problems)
    assert config.value(SSH_KEY) == "ssh-rsa AAAA user initpy.debug"
    assert config.value(DEBUG) is False


def test_disk_labels_given_as_parameters_get_a_hint() -> None:
    config = parse("buildos.state=/dev/sda")
    assert any("disk labels, not parameters" in p for p in config.problems)


def test_break_and_tabs_newlines() -> None:
    config = parse("initpy.break=load_modules\tinitpy.debug\n")
    assert config.value(BREAK) == "load_modules"
    assert config.value(DEBUG) is True


def test_report_form_is_plain_json_data() -> None:
    config = parse("initpy.rescue_timeout=5 bogus.x initpy.nope")
    data = config.as_report()
    assert data["parameters"] == {"initpy.rescue_timeout": 5.0}
    assert data["warnings"] and "initpy.nope" in str(data["warnings"])


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list('ab=" -.\t\nxyz_initpybuildos0123\\\x00é')), max_size=120)
    | st.text(max_size=200)
)
def test_parser_never_raises(text: str) -> None:
    config = parse(text)
    assert isinstance(config.problems, tuple)
    for key in config.values:
        assert key.startswith(("buildos.", "initpy."))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["initpy.debug", "initpy.rescue", "x.y", "initpy.exec"]),
            st.text(alphabet="abc /=", max_size=8),
        ),
        max_size=6,
    )
)
def test_last_value_wins_for_any_sequence(pairs: list[tuple[str, str]]) -> None:
    text = " ".join(f'{k}="{v}"' for k, v in pairs)
    config = parse(text)
    expected = {}
    for k, v in pairs:
        expected[k] = v
    for k, v in expected.items():
        assert config.raw[k] == v
