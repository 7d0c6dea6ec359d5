import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { LAMBDA_BUNDLE_SETTINGS, nodejsBundling, proxyBundling, tokenizerBundleCommand } from '../../lib/bundling';
import { ProxyFunction } from '../../lib/proxy-function';
import { UsageCounters } from '../../lib/usage-counters';
import { UsageLog } from '../../lib/usage-log';
import { logicalIdOf, synthGateway, testApp } from './synth-stack';

let template: Template;
let proxyFnId: string;
let metricsFnId: string;
let ids: Record<string, string>;

type Props = Record<string, any>;
type Statement = { Action: string | string[]; Resource: unknown; Effect: string };

function functionProps(id: string): Props {
  return (template.findResources('AWS::Lambda::Function')[id] as { Properties: Props }).Properties;
}

/** The statements of the default policy attached to a function's role. */
function statementsOf(fnId: string): Statement[] {
  const roleRef = functionProps(fnId).Role['Fn::GetAtt'][0] as string;
  const policies = Object.values(template.findResources('AWS::IAM::Policy')) as Array<{ Properties: Props }>;
  const policy = policies.find((p) => (p.Properties.Roles as Array<{ Ref: string }>).some((r) => r.Ref === roleRef));
  assert.ok(policy, `no policy for ${fnId}`);
  return policy.Properties.PolicyDocument.Statement as Statement[];
}

function actionsOn(fnId: string, resourceId: string): string[] {
  const mentions = (resource: unknown): boolean => JSON.stringify(resource).includes(`"${resourceId}"`);
  return statementsOf(fnId)
    .filter((s) => s.Effect === 'Allow' && mentions(s.Resource))
    .flatMap((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]))
    .sort();
}

function allActions(fnId: string): string[] {
  return statementsOf(fnId)
    .flatMap((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]))
    .sort();
}

before(() => {
  ({ template } = synthGateway());
  proxyFnId = logicalIdOf(template, 'AWS::Lambda::Function', { MemorySize: 256 });
  metricsFnId = logicalIdOf(template, 'AWS::Lambda::Function', { MemorySize: 512 });
  ids = {
    stream: logicalIdOf(template, 'AWS::KinesisFirehose::DeliveryStream'),
    table: logicalIdOf(template, 'AWS::DynamoDB::Table'),
    logBucket: logicalIdOf(template, 'AWS::S3::Bucket', { VersioningConfiguration: { Status: 'Enabled' } }),
    resultsBucket: Object.keys(template.findResources('AWS::S3::Bucket')).find((id) => id.startsWith('QueriesResults'))!,
    key: logicalIdOf(template, 'AWS::KMS::Key'),
    secret: logicalIdOf(template, 'AWS::SecretsManager::Secret'),
    glueTable: logicalIdOf(template, 'AWS::Glue::Table'),
    glueDatabase: logicalIdOf(template, 'AWS::Glue::Database'),
    workGroup: logicalIdOf(template, 'AWS::Athena::WorkGroup'),
  };
});

describe('ProxyFunction', () => {
  it('runs on Node 24, arm64, 256 MB, for up to 15 minutes', () => {
    const props = functionProps(proxyFnId);
    assert.equal(props.Runtime, 'nodejs24.x');
    assert.deepEqual(props.Architectures, ['arm64']);
    assert.equal(props.MemorySize, 256);
    assert.equal(props.Timeout, 900);
    assert.equal(props.Handler, 'index.handler');
  });

  it('is configured through its environment, without source maps by default', () => {
    assert.deepEqual(functionProps(proxyFnId).Environment.Variables, {
      UPSTREAM_OPENAI_URL: 'https://api.openai.com',
      EVENTS_STREAM_NAME: { Ref: ids.stream },
      COUNTERS_TABLE_NAME: { Ref: ids.table },
      RECOVERY_BUCKET_NAME: { Ref: ids.logBucket },
      RECOVERY_PREFIX: 'recovery/',
      LOG_LEVEL: 'info',
    });
  });

  it('reserves no concurrency by default', () => {
    assert.equal(functionProps(proxyFnId).ReservedConcurrentExecutions, undefined);
  });

  it('may put records to the Firehose stream', () => {
    assert.deepEqual(actionsOn(proxyFnId, ids.stream), ['firehose:PutRecord', 'firehose:PutRecordBatch']);
  });

  it('may read and write the counters table and its indexes', () => {
    const actions = actionsOn(proxyFnId, ids.table);
    for (const a of ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:BatchGetItem']) {
      assert.ok(actions.includes(a), a);
    }
    template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Resource: Match.arrayWith([{ 'Fn::Join': ['', [{ 'Fn::GetAtt': [ids.table, 'Arn'] }, '/index/*']] }]),
          }),
        ]),
      },
    });
  });

  it('may only put objects, and only under recovery/ of the log bucket', () => {
    const s3Statements = statementsOf(proxyFnId).filter((s) => JSON.stringify(s.Action).includes('s3:'));
    assert.equal(s3Statements.length, 1);
    assert.deepEqual(s3Statements[0]!.Resource, {
      'Fn::Join': ['', [{ 'Fn::GetAtt': [ids.logBucket, 'Arn'] }, '/recovery/*']],
    });
    const actions = s3Statements[0]!.Action as string[];
    assert.ok(actions.includes('s3:PutObject'));
    assert.ok(!actions.some((a) => a.startsWith('s3:Get') || a.startsWith('s3:Delete') || a.startsWith('s3:List')));
  });

  it('may not read history, secrets or Athena', () => {
    const actions = allActions(proxyFnId);
    assert.ok(!actions.some((a) => a.startsWith('athena:') || a.startsWith('glue:') || a.startsWith('secretsmanager:')));
  });
});

describe('MetricsFunction', () => {
  it('runs on Node 24, arm64, 512 MB, for 30 s', () => {
    const props = functionProps(metricsFnId);
    assert.equal(props.Runtime, 'nodejs24.x');
    assert.deepEqual(props.Architectures, ['arm64']);
    assert.equal(props.MemorySize, 512);
    assert.equal(props.Timeout, 30);
  });

  it('is configured through its environment, waiting 20 s for a query', () => {
    const env = functionProps(metricsFnId).Environment.Variables as Props;
    assert.deepEqual(env, {
      COUNTERS_TABLE_NAME: { Ref: ids.table },
      ADMIN_KEY_SECRET_ARN: { Ref: ids.secret },
      ATHENA_WORKGROUP: (template.findResources('AWS::Athena::WorkGroup')[ids.workGroup] as { Properties: Props }).Properties.Name,
      ATHENA_DATABASE: { Ref: ids.glueDatabase },
      ATHENA_TABLE: { Ref: ids.glueTable },
      QUERY_WAIT_MS: '20000',
      RESULTS_BUCKET_NAME: { Ref: ids.resultsBucket },
      LOG_LEVEL: 'info',
    });
    assert.ok(Number(env.QUERY_WAIT_MS) < 29_000);
  });

  it('may read the counters table and write nothing in it but users\' own limits', () => {
    const writes = ['dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:BatchWriteItem'];
    const onTable = statementsOf(metricsFnId).filter((s) => s.Effect === 'Allow' && JSON.stringify(s.Resource).includes(`"${ids.table}"`));
    const actionsOf = (s: Statement) => (Array.isArray(s.Action) ? s.Action : [s.Action]);
    const unconditional = onTable.filter((s) => (s as Statement & { Condition?: unknown }).Condition === undefined).flatMap(actionsOf);
    assert.ok(unconditional.includes('dynamodb:Query') && unconditional.includes('dynamodb:GetItem'));
    assert.ok(!unconditional.some((a) => writes.includes(a)), unconditional.join(','));
    const limitWrites = onTable.filter((s) => actionsOf(s).some((a) => writes.includes(a)));
    assert.equal(limitWrites.length, 1);
    assert.deepEqual(actionsOf(limitWrites[0]!).sort(), ['dynamodb:DeleteItem', 'dynamodb:PutItem']);
    assert.deepEqual((limitWrites[0] as Statement & { Condition?: unknown }).Condition, {
      'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['L#*'] },
    });
  });

  it('may read the admin key secret', () => {
    assert.deepEqual(actionsOn(metricsFnId, ids.secret), ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue']);
  });

  it('may start, watch, read and stop queries in its workgroup only', () => {
    const athena = statementsOf(metricsFnId).filter((s) => JSON.stringify(s.Action).includes('athena:'));
    assert.equal(athena.length, 1);
    assert.deepEqual((athena[0]!.Action as string[]).sort(), [
      'athena:GetQueryExecution',
      'athena:GetQueryResults',
      'athena:GetWorkGroup',
      'athena:StartQueryExecution',
      'athena:StopQueryExecution',
    ]);
    assert.ok(JSON.stringify(athena[0]!.Resource).includes(':workgroup/'));
  });

  it('may read the Glue database, table and partitions', () => {
    const actions = actionsOn(metricsFnId, ids.glueTable);
    for (const a of ['glue:GetDatabase', 'glue:GetTable', 'glue:GetPartition', 'glue:GetPartitions']) assert.ok(actions.includes(a), a);
  });

  it('may read event files and decrypt them, but not write the log bucket', () => {
    const actions = actionsOn(metricsFnId, ids.logBucket);
    assert.ok(actions.includes('s3:GetObject*') && actions.includes('s3:List*'));
    assert.ok(!actions.some((a) => a.startsWith('s3:Put') || a.startsWith('s3:Delete')));
    assert.ok(actionsOn(metricsFnId, ids.key).includes('kms:Decrypt'));
  });

  it('may read and write query results', () => {
    const actions = actionsOn(metricsFnId, ids.resultsBucket);
    assert.ok(actions.includes('s3:PutObject') && actions.includes('s3:GetObject*'));
  });
});

describe('gateway function bundling', () => {
  it('bundles with the local esbuild only: minified CommonJS for Node 22, no source map, SDK external', () => {
    const options = nodejsBundling();
    assert.equal(options.forceDockerBundling, false);
    assert.equal(options.minify, true);
    assert.equal(options.target, 'node22');
    assert.equal(options.format, OutputFormat.CJS);
    assert.equal(options.sourceMap, false);
    assert.deepEqual(options.externalModules, ['@aws-sdk/*', '@smithy/*']);
    assert.equal(LAMBDA_BUNDLE_SETTINGS.format, OutputFormat.CJS);
  });

  it('keeps the tokenizer out of the proxy bundle and bundles it beside it after bundling', () => {
    const options = proxyBundling();
    assert.ok(options.externalModules?.includes('./tokenizer.js'));
    const commands = options.commandHooks!.afterBundling('/project', '/asset-output');
    assert.deepEqual(commands, [tokenizerBundleCommand('/project', '/asset-output')]);
    assert.match(commands[0]!, /^\/project\/node_modules\/\.bin\/esbuild --bundle \/project\/lambda\/aws\/tokenizer-entry\.ts /);
    assert.match(commands[0]!, / --outfile=\/asset-output\/tokenizer\.js$/);
    assert.match(commands[0]!, / --target=node22 /);
    assert.match(commands[0]!, / --minify /);
  });

  it('emits source maps for both bundles when asked', () => {
    assert.equal(nodejsBundling({ sourceMap: true }).sourceMap, true);
    assert.match(tokenizerBundleCommand('/p', '/o', { sourceMap: true }), / --sourcemap /);
  });
});

describe('ProxyFunction props', () => {
  let props: Props;
  before(() => {
    const stack = new Stack(testApp(), 'Props');
    const accessLogsBucket = new s3.Bucket(stack, 'AccessLogs');
    new ProxyFunction(stack, 'Proxy', {
      usageLog: new UsageLog(stack, 'UsageLog', { accessLogsBucket }),
      counters: new UsageCounters(stack, 'Counters'),
      upstreamOpenAiUrl: 'https://llm.internal.example',
      memorySize: 512,
      reservedConcurrentExecutions: 50,
      logLevel: 'debug',
      sourceMap: true,
      runtime: lambda.Runtime.NODEJS_22_X,
    });
    const fns = Template.fromStack(stack).findResources('AWS::Lambda::Function');
    props = (Object.values(fns)[0] as { Properties: Props }).Properties;
  });

  it('takes the upstream URL, memory, reserved concurrency, log level and runtime', () => {
    assert.equal(props.Environment.Variables.UPSTREAM_OPENAI_URL, 'https://llm.internal.example');
    assert.equal(props.MemorySize, 512);
    assert.equal(props.ReservedConcurrentExecutions, 50);
    assert.equal(props.Environment.Variables.LOG_LEVEL, 'debug');
    assert.equal(props.Runtime, 'nodejs22.x');
  });

  it('runs with --enable-source-maps when it ships source maps', () => {
    assert.equal(props.Environment.Variables.NODE_OPTIONS, '--enable-source-maps');
  });
});
