"""The CloudFormation stacks: cfn-lint clean, and the properties the proxy's behaviour depends on.

cfn-lint checks that AWS would accept the templates; these tests check that they deploy *this* proxy right:
ports, probes, timeouts ordered against the proxy's shutdown, secrets never inline, cross-stack exports that
exist, the API Gateway header mapping the proxy reads, and a config the proxy itself accepts.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import GatewaySettings, ShutdownSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CFN = ROOT / "deploy" / "cloudformation"
TEMPLATES = ("network", "redis", "ecs", "api")
# Which stack each "<X>StackName" parameter names, for checking Fn::ImportValue against real exports.
STACK_PARAMS = {"NetworkStackName": "network", "RedisStackName": "redis"}


# ------------------------------------------------------------------------------------------------ loading


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that reads CloudFormation short forms (!Ref, !Sub, ...) into their long JSON forms."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load(name: str) -> dict[str, Any]:
    with open(CFN / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.load(f, Loader=_CfnLoader)  # a SafeLoader subclass: no arbitrary objects


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in TEMPLATES}


def resources(template: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == rtype]


def one(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = resources(template, rtype)
    assert len(found) == 1, f"expected exactly one {rtype}, found {len(found)}"
    return found[0]


def walk(node: Any) -> Any:
    """Every dict and list inside a template node (depth first), to find intrinsic functions anywhere."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    task = one(template, "AWS::ECS::TaskDefinition")
    by_name = {c["Name"]: c for c in task["Properties"]["ContainerDefinitions"]}
    assert name in by_name, f"no container {name!r} in the task definition (has {sorted(by_name)})"
    return by_name[name]


def cfn_lint_binary() -> str:
    """cfn-lint from the venv running the tests (CI installs it with scripts/check-cfn.sh)."""
    candidate = Path(sys.executable).parent / "cfn-lint"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("cfn-lint")
    if found is None:
        pytest.fail("cfn-lint is not installed: run scripts/check-cfn.sh (it installs it into .venv)")
    return found


# ------------------------------------------------------------------------------------------------ lint


def test_check_cfn_script_lints_every_template_clean() -> None:
    """The script CI runs: installs cfn-lint if needed and lints all four templates with no finding."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-cfn.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"cfn-lint findings:\n{result.stdout}\n{result.stderr}"
    for name in TEMPLATES:
        assert f"deploy/cloudformation/{name}.yaml" in result.stdout
    assert "4 templates clean" in result.stdout


def test_cfn_lint_rejects_a_broken_template(tmp_path: Path) -> None:
    """The lint step can fail: a task definition without the proxy's image is an error cfn-lint reports."""
    text = (CFN / "ecs.yaml").read_text(encoding="utf-8")
    broken = text.replace("          Image: !Ref ProxyImage\n", "", 1)
    assert broken != text
    path = tmp_path / "ecs.yaml"
    path.write_text(broken, encoding="utf-8")
    result = subprocess.run([cfn_lint_binary(), "--", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "'Image' is a required property" in result.stdout


# ------------------------------------------------------------------------------------------------ (a) network


def test_network_target_group_checks_readyz_on_the_metrics_port(templates: dict[str, dict[str, Any]]) -> None:
    tg = one(templates["network"], "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"]
    assert tg["TargetType"] == "ip"  # Fargate tasks register by IP
    assert tg["Protocol"] == "TCP"
    assert tg["Port"] == 8080
    assert tg["HealthCheckProtocol"] == "HTTP"
    assert tg["HealthCheckPort"] == 9090
    assert tg["HealthCheckPath"] == "/readyz"
    assert tg["Matcher"] == {"HttpCode": "200"}


def test_network_deregistration_delay_is_below_the_proxy_shutdown_timeout(
    templates: dict[str, dict[str, Any]],
) -> None:
    """The NLB must give up on a draining target before the proxy gives up on its requests."""
    net = templates["network"]
    tg = one(net, "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"]
    attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    assert attrs["deregistration_delay.timeout_seconds"] == {"Ref": "DeregistrationDelaySeconds"}
    param = net["Parameters"]["DeregistrationDelaySeconds"]
    shutdown_timeout = ShutdownSettings().timeout
    assert param["Default"] < shutdown_timeout
    assert param["MaxValue"] < shutdown_timeout  # no allowed value breaks the ordering


def test_network_nlb_is_internal_with_a_tcp_listener_to_the_target_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    net = templates["network"]
    nlb = one(net, "AWS::ElasticLoadBalancingV2::LoadBalancer")["Properties"]
    assert nlb["Type"] == "network"
    assert nlb["Scheme"] == "internal"
    listener = one(net, "AWS::ElasticLoadBalancingV2::Listener")["Properties"]
    assert listener["Protocol"] == "TCP"
    assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}]


def test_network_tasks_accept_only_the_nlb_on_proxy_and_metrics_ports(templates: dict[str, dict[str, Any]]) -> None:
    ingress = resources(templates["network"], "AWS::EC2::SecurityGroupIngress")
    task_sg = {"Fn::GetAtt": ["TaskSecurityGroup", "GroupId"]}
    nlb_sg = {"Fn::GetAtt": ["NlbSecurityGroup", "GroupId"]}
    rules = sorted(
        (r["Properties"]["FromPort"], r["Properties"]["ToPort"], r["Properties"]["SourceSecurityGroupId"] == nlb_sg)
        for r in ingress
        if r["Properties"]["GroupId"] == task_sg
    )
    assert rules == [(8080, 8080, True), (9090, 9090, True)]
    task_group = templates["network"]["Resources"]["TaskSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in task_group  # nothing else may reach the tasks


def test_network_exports_what_the_other_stacks_need(templates: dict[str, dict[str, Any]]) -> None:
    exported = exports(templates["network"])
    assert {
        "NlbArn",
        "NlbDnsName",
        "ListenerArn",
        "TargetGroupArn",
        "PrivateSubnetIds",
        "TaskSecurityGroupId",
        "NlbSecurityGroupId",
        "VpcId",
    } <= exported


# ------------------------------------------------------------------------------------------------ (b) redis


def test_redis_is_encrypted_and_its_auth_token_comes_from_the_generated_secret(
    templates: dict[str, dict[str, Any]],
) -> None:
    redis = templates["redis"]
    group = one(redis, "AWS::ElastiCache::ReplicationGroup")["Properties"]
    assert group["TransitEncryptionEnabled"] is True
    assert group["AtRestEncryptionEnabled"] is True
    # A dynamic reference: CloudFormation reads the secret at deploy time; the value is never in the template.
    assert group["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${AuthTokenSecret}}}"}
    secret = redis["Resources"]["AuthTokenSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generate = secret["Properties"]["GenerateSecretString"]
    assert 16 <= generate["PasswordLength"] <= 128  # ElastiCache's AUTH token length limits
    # No punctuation: ElastiCache refuses ", / and @, and the token is embedded in the rediss:// URL.
    assert generate["ExcludePunctuation"] is True
    assert generate.get("IncludeSpace", False) is False


def test_redis_failover_and_multi_az_follow_one_parameter(templates: dict[str, dict[str, Any]]) -> None:
    redis = templates["redis"]
    group = one(redis, "AWS::ElastiCache::ReplicationGroup")["Properties"]
    toggle = {"Fn::If": ["UseHighAvailability", True, False]}
    assert group["AutomaticFailoverEnabled"] == toggle
    assert group["MultiAZEnabled"] == toggle
    assert redis["Conditions"]["UseHighAvailability"] == {"Fn::Equals": [{"Ref": "HighAvailability"}, "true"]}
    assert "HighAvailabilityNeedsReplica" in redis["Rules"]  # failover with a single node is refused up front


def test_redis_admits_only_the_task_security_group_on_6379(templates: dict[str, dict[str, Any]]) -> None:
    sg = one(templates["redis"], "AWS::EC2::SecurityGroup")["Properties"]
    assert sg["SecurityGroupIngress"] == [
        {
            "Description": "Redis (TLS) from the proxy tasks",
            "IpProtocol": "tcp",
            "FromPort": 6379,
            "ToPort": 6379,
            "SourceSecurityGroupId": {"Fn::ImportValue": {"Fn::Sub": "${NetworkStackName}-TaskSecurityGroupId"}},
        }
    ]
    assert {"PrimaryEndpointAddress", "PrimaryEndpointPort", "AuthTokenSecretArn"} <= exports(templates["redis"])


# ------------------------------------------------------------------------------------------------ (c) ecs


def test_ecs_proxy_starts_after_the_app_is_healthy(templates: dict[str, dict[str, Any]]) -> None:
    ecs = templates["ecs"]
    proxy, app = container(ecs, "threescale-proxy"), container(ecs, "app")
    assert proxy["DependsOn"] == [{"ContainerName": "app", "Condition": "HEALTHY"}]
    assert app["HealthCheck"]["Command"][0] == "CMD-SHELL"  # HEALTHY needs a health check on the app


def test_ecs_proxy_health_check_probes_readyz_with_python(templates: dict[str, dict[str, Any]]) -> None:
    check = container(templates["ecs"], "threescale-proxy")["HealthCheck"]
    command = check["Command"]
    assert command[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:9090/readyz" in command[3]
    assert not any("curl" in part for part in command)


def test_ecs_proxy_health_check_command_exits_by_readiness(tmp_path: Path) -> None:
    """Run the health check's Python against a stand-in /readyz: 200 → exit 0, 503 → non-zero."""
    import http.server
    import threading

    script = container(load("ecs"), "threescale-proxy")["HealthCheck"]["Command"][3]
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/readyz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = script.replace("127.0.0.1:9090", f"127.0.0.1:{port}")
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=10).returncode == 0
        status["code"] = 503
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=10).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_ecs_proxy_stop_timeout_is_above_its_shutdown_timeout(templates: dict[str, dict[str, Any]]) -> None:
    proxy = container(templates["ecs"], "threescale-proxy")
    config = proxy_config(templates["ecs"])
    assert config.shutdown.timeout < proxy["StopTimeout"] <= 120  # 120 s is Fargate's maximum
    assert ShutdownSettings().timeout < proxy["StopTimeout"]


def test_ecs_proxy_runs_read_only_with_init_and_a_tmp_volume(templates: dict[str, dict[str, Any]]) -> None:
    ecs = templates["ecs"]
    proxy = container(ecs, "threescale-proxy")
    assert proxy["LinuxParameters"]["InitProcessEnabled"] is True
    assert proxy["ReadonlyRootFilesystem"] is True
    mounts = {m["ContainerPath"]: m["SourceVolume"] for m in proxy["MountPoints"]}
    volumes = {v["Name"] for v in one(ecs, "AWS::ECS::TaskDefinition")["Properties"]["Volumes"]}
    assert mounts.get("/tmp") in volumes


def test_ecs_secrets_come_from_secrets_manager_or_ssm_never_inline(templates: dict[str, dict[str, Any]]) -> None:
    ecs = templates["ecs"]
    proxy = container(ecs, "threescale-proxy")
    plain = [s for s in proxy["Secrets"] if "Fn::If" not in s]
    optional = [s["Fn::If"] for s in proxy["Secrets"] if "Fn::If" in s]
    secrets = {s["Name"]: s["ValueFrom"] for s in plain}
    assert secrets == {
        "THREESCALE_SERVICE_TOKEN": {"Ref": "ServiceTokenArn"},
        "REDIS_AUTH_TOKEN": {"Fn::ImportValue": {"Fn::Sub": "${RedisStackName}-AuthTokenSecretArn"}},
    }
    assert optional == [
        [
            "UsePortal",
            {"Name": "THREESCALE_PORTAL_ENDPOINT", "ValueFrom": {"Ref": "PortalEndpointArn"}},
            {"Ref": "AWS::NoValue"},
        ]
    ]
    secrets["THREESCALE_PORTAL_ENDPOINT"] = {"Ref": "PortalEndpointArn"}
    env_names = {
        e["Name"]
        for c in one(ecs, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"]
        for e in c.get("Environment", [])
    }
    assert not env_names & set(secrets)


def test_ecs_both_containers_log_to_cloudwatch(templates: dict[str, dict[str, Any]]) -> None:
    ecs = templates["ecs"]
    for name in ("app", "threescale-proxy"):
        log = container(ecs, name)["LogConfiguration"]
        assert log["LogDriver"] == "awslogs"
        assert log["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
        assert log["Options"]["awslogs-stream-prefix"]


def test_ecs_load_balancer_reaches_the_proxy_port_of_the_network_target_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    ecs = templates["ecs"]
    service = one(ecs, "AWS::ECS::Service")["Properties"]
    assert service["LoadBalancers"] == [
        {
            "ContainerName": "threescale-proxy",
            "ContainerPort": 8080,
            "TargetGroupArn": {"Fn::ImportValue": {"Fn::Sub": "${NetworkStackName}-TargetGroupArn"}},
        }
    ]
    ports = {p["ContainerPort"] for p in container(ecs, "threescale-proxy")["PortMappings"]}
    assert ports == {8080, 9090}
    config = proxy_config(ecs)
    assert config.listen.endswith(":8080")
    assert config.metrics_listen.endswith(":9090")
    deploy = service["DeploymentConfiguration"]
    assert deploy["MinimumHealthyPercent"] == 100
    assert deploy["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_ecs_execution_role_is_scoped_to_its_log_group_and_secrets(templates: dict[str, dict[str, Any]]) -> None:
    role = templates["ecs"]["Resources"]["ExecutionRole"]["Properties"]
    assert "ManagedPolicyArns" not in role  # the AWS managed policy allows every log group and secret
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    plain = [s for s in statements if "Sid" in s]
    by_sid = {s["Sid"]: s for s in plain}
    assert by_sid["Logs"]["Resource"] == {"Fn::GetAtt": ["LogGroup", "Arn"]}
    assert by_sid["Secrets"]["Action"] == "secretsmanager:GetSecretValue"
    assert "*" not in str(by_sid["Secrets"]["Resource"])
    wildcard = [s["Sid"] for s in plain if s["Resource"] == "*"]
    assert wildcard == ["EcrAuth"]  # GetAuthorizationToken cannot be scoped to a resource


def test_ecs_proxy_config_is_accepted_by_the_proxy(templates: dict[str, dict[str, Any]]) -> None:
    """The YAML the task hands the proxy loads with the proxy's own validation, secrets interpolated."""
    config = proxy_config(templates["ecs"])
    assert config.redis_url == "rediss://:redis-secret-token@master.abc.use1.cache.amazonaws.com:6379/0"
    assert len(config.services) == 1
    service = config.services[0]
    assert service.id == "2555417777820"
    assert service.token == "service-token-from-secrets-manager"
    assert service.upstream == "http://127.0.0.1:3000"  # AppPort's default
    assert config.workers == 1  # ProxyWorkers' default: the task's CPU is shared with the app


def test_ecs_proxy_workers_left_empty_mean_one_per_cpu(templates: dict[str, dict[str, Any]]) -> None:
    ecs = copy.deepcopy(templates["ecs"])
    ecs["Parameters"]["ProxyWorkers"]["Default"] = ""
    assert proxy_config(ecs).workers is None  # the proxy's own default: the CPUs the container may use
    assert re.fullmatch(ecs["Parameters"]["ProxyWorkers"]["AllowedPattern"], "")


def test_ecs_with_a_portal_endpoint_takes_services_from_3scale(templates: dict[str, dict[str, Any]]) -> None:
    config = proxy_config(templates["ecs"], portal=True)
    assert config.threescale.portal_endpoint == "https://portal-token@acme-admin.3scale.net"
    assert [s.id for s in config.services] == ["2555417777820"]  # until the portal answers; then merged
    statements = [
        s
        for p in templates["ecs"]["Resources"]["ExecutionRole"]["Properties"]["Policies"]
        for s in p["PolicyDocument"]["Statement"]
    ]
    portal = [s["Fn::If"][1] for s in statements if "Fn::If" in s and s["Fn::If"][0] == "UsePortal"]
    assert portal == [
        {
            "Sid": "PortalEndpoint",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": {"Ref": "PortalEndpointArn"},
        }
    ]
    assert proxy_config(templates["ecs"]).threescale.portal_endpoint is None  # the default: no portal


def proxy_config(ecs: dict[str, Any], *, portal: bool = False) -> Any:
    """THREESCALE_PROXY_CONFIG as the container sees it (CloudFormation's Sub done by hand), loaded by the proxy."""
    env = {e["Name"]: e["Value"] for e in container(ecs, "threescale-proxy")["Environment"]}
    assert env["PROXY_CONFIG"] == "env:THREESCALE_PROXY_CONFIG"  # config from that variable, not a file
    text, variables = env["THREESCALE_PROXY_CONFIG"]["Fn::Sub"]
    values = {name: str(p.get("Default", "")) for name, p in ecs["Parameters"].items()}
    values["ThreescaleServiceId"] = "2555417777820"
    imports = {
        "RedisHost": "master.abc.use1.cache.amazonaws.com",
        "RedisPort": "6379",
    }
    assert set(variables) == set(imports) | {"PortalLine"}
    condition, with_portal, without = variables["PortalLine"]["Fn::If"]
    assert condition == "UsePortal"
    imports["PortalLine"] = with_portal if portal else without

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"  # ${!VAR} is CloudFormation's escape for a literal ${VAR}
        return imports.get(name) or values[name]

    rendered = re.sub(r"\$\{([^}]+)\}", substitute, text)
    assert "${REDIS_AUTH_TOKEN}" in rendered and "${THREESCALE_SERVICE_TOKEN}" in rendered
    secrets = {
        "REDIS_AUTH_TOKEN": "redis-secret-token",
        "THREESCALE_SERVICE_TOKEN": "service-token-from-secrets-manager",
    }
    if portal:
        secrets["THREESCALE_PORTAL_ENDPOINT"] = "https://portal-token@acme-admin.3scale.net"
    # exactly what the container does: PROXY_CONFIG=env:THREESCALE_PROXY_CONFIG, secrets in the environment
    return load_settings(env["PROXY_CONFIG"], env={**secrets, "THREESCALE_PROXY_CONFIG": rendered})


# ------------------------------------------------------------------------------------------------ (d) api


def test_api_is_regional_with_binary_pass_through(templates: dict[str, dict[str, Any]]) -> None:
    api = one(templates["api"], "AWS::ApiGateway::RestApi")["Properties"]
    assert api["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    assert api["BinaryMediaTypes"] == ["*/*"]


def test_api_root_and_greedy_proxy_are_http_proxy_integrations(templates: dict[str, dict[str, Any]]) -> None:
    api = templates["api"]
    methods = {
        m["Properties"]["ResourceId"].get("Ref", "root"): m["Properties"]
        for m in resources(api, "AWS::ApiGateway::Method")
    }
    assert set(methods) == {"root", "ProxyResource"}
    assert api["Resources"]["ProxyResource"]["Properties"]["PathPart"] == "{proxy+}"
    for method in methods.values():
        assert method["HttpMethod"] == "ANY"
        integration = method["Integration"]
        assert integration["Type"] == "HTTP_PROXY"
        assert integration["IntegrationHttpMethod"] == "ANY"
        assert integration["ConnectionType"] == {"Ref": "ConnectionType"}
        assert integration["ConnectionId"] == {"Fn::If": ["UseVpcLink", {"Ref": "VpcLink"}, {"Ref": "AWS::NoValue"}]}
        assert method["ApiKeyRequired"] == {"Fn::If": ["RequireApiKey", True, False]}
    greedy = methods["ProxyResource"]
    assert greedy["RequestParameters"] == {"method.request.path.proxy": True}
    assert greedy["Integration"]["RequestParameters"]["integration.request.path.proxy"] == "method.request.path.proxy"
    assert greedy["Integration"]["Uri"]["Fn::If"][1] == {"Fn::Sub": "${IntegrationBaseUri}/{proxy}"}
    assert api["Parameters"]["ConnectionType"]["AllowedValues"] == ["VPC_LINK", "INTERNET"]
    link = api["Resources"]["VpcLink"]
    assert link["Condition"] == "UseVpcLink"
    assert link["Properties"]["TargetArns"] == [{"Fn::ImportValue": {"Fn::Sub": "${NetworkStackName}-NlbArn"}}]


def test_api_maps_the_request_context_into_the_headers_the_proxy_reads(templates: dict[str, dict[str, Any]]) -> None:
    gateway = GatewaySettings()
    expected = {
        f"integration.request.header.{gateway.stage_header}": "context.stage",
        f"integration.request.header.{gateway.request_id_header}": "context.extendedRequestId",
        f"integration.request.header.{gateway.source_ip_header}": "context.identity.sourceIp",
        f"integration.request.header.{gateway.api_key_id_header}": "context.identity.apiKeyId",
    }
    for method in resources(templates["api"], "AWS::ApiGateway::Method"):
        mapped = method["Properties"]["Integration"]["RequestParameters"]
        headers = {k: v for k, v in mapped.items() if k.startswith("integration.request.header.")}
        assert headers == expected


def test_api_stage_traces_meters_throttles_and_takes_an_optional_client_certificate(
    templates: dict[str, dict[str, Any]],
) -> None:
    api = templates["api"]
    stage = one(api, "AWS::ApiGateway::Stage")["Properties"]
    assert stage["TracingEnabled"] == {"Ref": "TracingEnabled"}
    assert api["Parameters"]["TracingEnabled"]["Default"] == "true"
    (settings,) = stage["MethodSettings"]
    assert settings["MetricsEnabled"] is True
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert stage["ClientCertificateId"] == {
        "Fn::If": ["UseClientCertificate", {"Ref": "ClientCertificate"}, {"Ref": "AWS::NoValue"}]
    }
    assert api["Resources"]["ClientCertificate"]["Condition"] == "UseClientCertificate"


def test_api_usage_plan_is_optional_and_api_keys_follow_it(templates: dict[str, dict[str, Any]]) -> None:
    api = templates["api"]
    plan = api["Resources"]["UsagePlan"]
    assert plan["Condition"] == "UseUsagePlan"
    assert plan["Properties"]["ApiStages"] == [{"ApiId": {"Ref": "RestApi"}, "Stage": {"Ref": "Stage"}}]
    # API keys can only be required when a usage plan exists to hold them.
    assert api["Conditions"]["RequireApiKey"] == {
        "Fn::And": [{"Condition": "UseUsagePlan"}, {"Fn::Equals": [{"Ref": "UsagePlanRequireApiKey"}, "true"]}]
    }
    outputs = api["Outputs"]
    assert {"InvokeUrl", "RestApiId", "StageName"} <= set(outputs)
    assert "${Stage}" in outputs["InvokeUrl"]["Value"]["Fn::Sub"]


# ------------------------------------------------------------------------------------------------ all stacks


def exports(template: dict[str, Any]) -> set[str]:
    """Export names of a template, without the `${AWS::StackName}-` prefix."""
    names = set()
    for output in template.get("Outputs", {}).values():
        export = output.get("Export")
        if export:
            sub = export["Name"]["Fn::Sub"]
            assert sub.startswith("${AWS::StackName}-"), sub
            names.add(sub.removeprefix("${AWS::StackName}-"))
    return names


def test_every_import_names_an_export_of_the_stack_its_parameter_points_to(
    templates: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, template in templates.items():
        for node in walk(template):
            if isinstance(node, dict) and "Fn::ImportValue" in node:
                sub = node["Fn::ImportValue"]["Fn::Sub"]
                match = re.fullmatch(r"\$\{(\w+)\}-(\w+)", sub)
                assert match, f"{name}.yaml: import {sub!r} is not ${{<Stack>StackName}}-<Export>"
                param, export = match.groups()
                target = STACK_PARAMS[param]
                assert export in exports(templates[target]), f"{name}.yaml imports {export}, {target}.yaml lacks it"
                assert templates[name]["Parameters"][param]["Default"] == f"threescale-proxy-{target}"
                checked += 1
    assert checked >= 10


def test_readme_documents_every_parameter_and_output() -> None:
    readme = (CFN / "README.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### (\w+)\.yaml\b.*?\n(.*?)(?=^### |\Z)", readme, flags=re.M | re.S))
    assert set(sections) >= set(TEMPLATES)
    missing = []
    for name in TEMPLATES:
        template = load(name)
        for kind in ("Parameters", "Outputs"):
            for key in template.get(kind, {}):
                if f"`{key}`" not in sections[name]:
                    missing.append(f"{name}.yaml {kind[:-1].lower()} {key}")
    assert not missing, "undocumented in deploy/cloudformation/README.md: " + ", ".join(missing)
