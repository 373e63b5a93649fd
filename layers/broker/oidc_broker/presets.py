"""Issuer presets: what the broker knows about each CI system's tokens, as tables.

Each preset says which claims its tokens carry, which are immutable IDs, which compare
case-insensitively, which the pipeline's author or pusher controls, which mutable name each ID
stands behind, which values of a claim are dangerous unless a trust rule names them, which IDs
pin the tenant on an issuer every customer shares, and where a claim's values hold '/' or ':'
that a glob's '*' cannot stand for. Reading a table tells the whole policy; a rule naming a
claim a preset does not know draws a warning. Pure data and lookups: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A place in a claim's values that usually holds '/' or ':', where a glob's '*' falls short.

    `where` fullmatches the text of a glob whose last '*' stands there; the '*' then matches
    `short` (no delimiter) but never `long` (what values usually hold there).
    """

    where: re.Pattern[str]
    short: str
    long: str
    instead: str


# A branch or tag name after its last fixed '/': names such as 'feature/login' hold '/' too.
BRANCH = Span(re.compile(r".*/\*"), "main", "feature/login",
              "add a pattern for each level (e.g. 'refs/heads/*/*') or name the branches")


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    # claim -> why it is there / what it means (documentation that is also the known-claim set)
    claims: dict[str, str]
    # immutable IDs: a deleted account's name can be registered again; its ID cannot
    immutable: frozenset[str] = frozenset()
    # names the CI system treats as case-insensitive (compared in ASCII lower case)
    case_insensitive: frozenset[str] = frozenset()
    # values the pipeline's author or pusher chooses: weak evidence on their own
    user_controlled: frozenset[str] = frozenset()
    # mutable name -> the immutable ID a rule should match beside it
    id_for: dict[str, str] = field(default_factory=dict)
    # claim -> values refused unless a trust rule names them literally
    dangerous: dict[str, frozenset[str]] = field(default_factory=dict)
    # claims the CI system sends as strings even when they look like numbers
    strings: frozenset[str] = frozenset()
    # immutable IDs of one customer: the issuer signs every customer's tokens, so a rule must pin one
    tenant: frozenset[str] = frozenset()
    # `sub` values that pin the tenant by themselves (an immutable ID inside the subject)
    tenant_subject: re.Pattern[str] | None = None
    tenant_subject_form: str = ""  # that form, as the refusal of an unpinned rule shows it
    # claim -> places its values usually hold a delimiter ('*' never matches '/' or ':')
    spans: dict[str, tuple[Span, ...]] = field(default_factory=dict)


_STANDARD = {
    "iss": "issuer", "sub": "subject", "aud": "audience", "exp": "expiry", "nbf": "not before",
    "iat": "issued at", "jti": "token ID",
}

GITHUB = Preset(
    name="github",
    title="GitHub Actions",
    claims={
        **_STANDARD,
        "sub": "repo:OWNER/REPO:CONTEXT, or repo:OWNER@OWNER-ID/REPO@REPO-ID:CONTEXT (new repositories)",
        "actor": "user who triggered the run (a name: can change hands)",
        "actor_id": "immutable ID of the actor",
        "base_ref": "target branch of a pull request",
        "enterprise": "enterprise slug", "enterprise_id": "immutable enterprise ID",
        "environment": "deployment environment of the job (protected by repository admins)",
        "event_name": "event that triggered the workflow",
        "head_ref": "source branch of a pull request",
        "job_workflow_ref": "reusable workflow path and ref", "job_workflow_sha": "reusable workflow commit",
        "ref": "git ref the workflow runs on", "ref_protected": "whether the ref is protected",
        "ref_type": "branch or tag",
        "repository": "owner/repo (a name: can be renamed or re-registered)",
        "repository_id": "immutable repository ID",
        "repository_owner": "owner (a name: can be re-registered)",
        "repository_owner_id": "immutable owner ID",
        "repository_visibility": "public, private or internal",
        "run_attempt": "attempt number", "run_id": "run ID", "run_number": "run number",
        "runner_environment": "github-hosted or self-hosted",
        "sha": "commit", "workflow": "workflow name", "workflow_ref": "workflow path and ref",
        "workflow_sha": "workflow commit", "check_run_id": "check run ID",
    },
    immutable=frozenset({"repository_id", "repository_owner_id", "actor_id", "enterprise_id"}),
    # GitHub owner, repository, user and enterprise names are case-insensitive; refs and IDs are not.
    case_insensitive=frozenset({"repository", "repository_owner", "actor", "enterprise"}),
    user_controlled=frozenset({"ref", "head_ref", "base_ref", "actor", "workflow", "sha"}),
    id_for={"repository": "repository_id", "repository_owner": "repository_owner_id", "actor": "actor_id",
            "enterprise": "enterprise_id"},
    # These run with the base repository's privileges on code an outsider can influence.
    dangerous={"event_name": frozenset({"pull_request_target", "workflow_run"})},
    strings=frozenset({"repository_id", "repository_owner_id", "actor_id", "enterprise_id", "run_id",
                       "run_number", "run_attempt", "check_run_id", "ref_protected"}),
    # One owner or one repository; every GitHub.com customer's tokens share the issuer and its keys.
    tenant=frozenset({"repository_owner_id", "repository_id"}),
    # GitHub's immutable subject form: the owner (name@ID) literal; a glob may follow it, since
    # '*' never crosses '/' or ':'.
    tenant_subject=re.compile(r"repo:[^/:@*]+@[0-9]+/.+"),
    tenant_subject_form="repo:OWNER@OWNER-ID/REPO@REPO-ID:...",
    spans={
        # 'repo:acme/app:*' matches only 'repo:acme/app:pull_request': the context holds ':' itself.
        "sub": (Span(re.compile(r"repo:[^:]*:\*"), "pull_request", "ref:refs/heads/main",
                     "name the context ('...:ref:refs/heads/main', '...:environment:production') "
                     "or match the repository_id and ref claims instead"), BRANCH),
        "ref": (BRANCH,), "base_ref": (BRANCH,), "head_ref": (BRANCH,),
        # 'OWNER/REPO/.github/workflows/FILE@REF': the ref after '@' holds '/'.
        "workflow_ref": (BRANCH,), "job_workflow_ref": (BRANCH,),
    },
)

GITLAB = Preset(
    name="gitlab",
    title="GitLab CI/CD",
    claims={
        **_STANDARD,
        "namespace_id": "immutable group or user namespace ID", "namespace_path": "group or user path",
        "project_id": "immutable project ID", "project_path": "group/project path",
        "user_id": "immutable ID of the user who started the job", "user_login": "username",
        "user_email": "e-mail of the user", "user_identities": "external identities",
        "pipeline_id": "pipeline ID", "pipeline_source": "what started the pipeline",
        "job_id": "job ID", "ref": "git ref", "ref_type": "branch or tag", "ref_path": "full ref",
        "ref_protected": "whether the ref is protected", "environment": "deployment environment",
        "environment_protected": "whether the environment is protected",
        "environment_action": "start, prepare or stop", "deployment_tier": "production, staging, …",
        "runner_id": "runner ID", "runner_environment": "gitlab-hosted or self-hosted",
        "sha": "commit", "ci_config_ref_uri": "pipeline definition ref", "ci_config_sha": "pipeline definition commit",
        "project_visibility": "public, internal or private", "groups_direct": "direct group memberships",
    },
    immutable=frozenset({"namespace_id", "project_id", "user_id"}),
    # GitLab paths resolve case-insensitively; environment names are case-sensitive.
    case_insensitive=frozenset({"namespace_path", "project_path", "user_login"}),
    user_controlled=frozenset({"ref", "ref_path", "user_login", "user_email", "environment", "sha"}),
    id_for={"namespace_path": "namespace_id", "project_path": "project_id", "user_login": "user_id"},
    strings=frozenset({"namespace_id", "project_id", "user_id", "pipeline_id", "job_id", "runner_id",
                       "ref_protected", "environment_protected"}),
    # One group or one project; gitlab.com signs every customer's tokens with the same keys.
    tenant=frozenset({"namespace_id", "project_id"}),
    spans={"ref": (BRANCH,), "ref_path": (BRANCH,), "ci_config_ref_uri": (BRANCH,),
           # 'project_path:G/P:ref_type:branch:ref:NAME': the branch name holds '/'.
           "sub": (Span(re.compile(r".*:ref:\*"), "main", "feature/login", BRANCH.instead),)},
)

BUILDKITE = Preset(
    name="buildkite",
    title="Buildkite",
    claims={
        **_STANDARD,
        "organization_slug": "organization slug", "organization_id": "immutable organization ID",
        "pipeline_slug": "pipeline slug", "pipeline_id": "immutable pipeline ID",
        "build_number": "build number", "build_branch": "branch", "build_tag": "tag",
        "build_commit": "commit", "build_source": "what started the build", "step_key": "step key",
        "job_id": "job ID", "agent_id": "agent ID", "cluster_id": "cluster ID", "queue_id": "queue ID",
        "runner_environment": "buildkite-hosted or self-hosted",
    },
    immutable=frozenset({"organization_id", "pipeline_id", "cluster_id", "queue_id"}),
    user_controlled=frozenset({"build_branch", "build_tag", "build_commit", "step_key"}),
    id_for={"organization_slug": "organization_id", "pipeline_slug": "pipeline_id"},
    # One organization, or one of its pipelines (a pipeline ID belongs to one organization).
    tenant=frozenset({"organization_id", "pipeline_id"}),
    spans={"build_branch": (BRANCH,)},
)

CIRCLECI = Preset(
    name="circleci",
    title="CircleCI",
    claims={
        **_STANDARD,
        "oidc.circleci.com/org-id": "immutable organization ID",
        "oidc.circleci.com/project-id": "immutable project ID",
        "oidc.circleci.com/context-ids": "contexts the job may use",
        "oidc.circleci.com/vcs-origin": "repository URL",
        "oidc.circleci.com/vcs-ref": "git ref",
        "oidc.circleci.com/ssh-rerun": "whether the job is an SSH rerun",
        "oidc.circleci.com/pipeline-id": "pipeline ID",
        "oidc.circleci.com/pipeline-definition-id": "pipeline definition ID",
        "oidc.circleci.com/user-id": "immutable ID of the user who started the job",
    },
    immutable=frozenset({"oidc.circleci.com/org-id", "oidc.circleci.com/project-id", "oidc.circleci.com/user-id"}),
    user_controlled=frozenset({"oidc.circleci.com/vcs-ref"}),
    id_for={"oidc.circleci.com/vcs-origin": "oidc.circleci.com/project-id"},
    # Anyone who can rerun a job with SSH holds its token interactively.
    dangerous={"oidc.circleci.com/ssh-rerun": frozenset({True})},
    # One organization or one project; CircleCI signs every organization's tokens with the same keys.
    tenant=frozenset({"oidc.circleci.com/org-id", "oidc.circleci.com/project-id"}),
    spans={"oidc.circleci.com/vcs-ref": (BRANCH,)},
)

GENERIC = Preset(name="generic", title="a generic OIDC issuer", claims={})

PRESETS: dict[str, Preset] = {p.name: p for p in (GITHUB, GITLAB, BUILDKITE, CIRCLECI, GENERIC)}

# Issuer URLs each preset is chosen for when a trusted issuer names none.
_GUESSES = (
    (re.compile(r"https://token\.actions\.githubusercontent\.com(/[A-Za-z0-9_-]+)?"), "github"),
    (re.compile(r"https://[^/]+/_services/token"), "github"),  # GitHub Enterprise Server
    (re.compile(r"https://gitlab\.com"), "gitlab"),
    (re.compile(r"https://agent\.buildkite\.com"), "buildkite"),
    (re.compile(r"https://oidc\.circleci\.com/org/[0-9a-f-]{36}"), "circleci"),
)


def for_issuer(url: str) -> Preset:
    """The preset an issuer URL implies; generic when none does (self-managed GitLab says so)."""
    for pattern, name in _GUESSES:
        if pattern.fullmatch(url):
            return PRESETS[name]
    return GENERIC


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(value: str) -> str:
    """Lower-case A-Z only: Unicode case folding would let look-alikes ('ſ', 'K') match."""
    return value.translate(_ASCII_LOWER)
