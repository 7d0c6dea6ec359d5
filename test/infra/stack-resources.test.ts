import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Duration, Size, Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { counterTableDefinition, TTL_ATTRIBUTE } from '../../lambda/aws/table-design';
import { MetricsFunction } from '../../lib/metrics-function';
import { UsageCounters } from '../../lib/usage-counters';
import { UsageLog } from '../../lib/usage-log';
import { UsageQueries } from '../../lib/usage-queries';
import { logicalIdOf, synthGateway, testApp } from './synth-stack';

let template: Template;

type Resource = { Properties: Record<string, any>; DeletionPolicy?: string };

function only(type: string): Resource & { id: string } {
  const id = logicalIdOf(template, type);
  return { id, ...(template.findResources(type)[id] as Resource) };
}

before(() => {
  ({ template } = synthGateway());
});

describe('LlmUsageGatewayStack inventory', () => {
  it('synthesizes the expected resources, one per concern', () => {
    const counts: Record<string, number> = {};
    for (const r of Object.values(template.toJSON().Resources as Record<string, { Type: string }>)) {
      counts[r.Type] = (counts[r.Type] ?? 0) + 1;
    }
    assert.deepEqual(counts, {
      'AWS::S3::Bucket': 3,
      'AWS::S3::BucketPolicy': 3,
      'AWS::KMS::Key': 1,
      'AWS::Glue::Database': 1,
      'AWS::Glue::Table': 1,
      'AWS::Logs::LogGroup': 4,
      'AWS::Logs::LogStream': 1,
      'AWS::IAM::Role': 3,
      'AWS::IAM::Policy': 3,
      'AWS::KinesisFirehose::DeliveryStream': 1,
      'AWS::DynamoDB::Table': 1,
      'AWS::Athena::WorkGroup': 1,
      'AWS::SecretsManager::Secret': 1,
      'AWS::Lambda::Function': 2,
      'AWS::Lambda::Permission': 2,
      'AWS::ApiGateway::RestApi': 1,
      'AWS::ApiGateway::Deployment': 1,
      'AWS::ApiGateway::Stage': 1,
      'AWS::ApiGateway::Resource': 7,
      'AWS::ApiGateway::Method': 6,
    });
  });
});

describe('UsageCounters table', () => {
  it('is on demand, with point-in-time recovery and TTL on expires_at', () => {
    const { Properties: p } = only('AWS::DynamoDB::Table');
    assert.equal(p.BillingMode, 'PAY_PER_REQUEST');
    assert.deepEqual(p.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
    assert.deepEqual(p.TimeToLiveSpecification, { AttributeName: 'expires_at', Enabled: true });
    assert.equal(TTL_ATTRIBUTE, 'expires_at');
  });

  it('is protected from deletion and kept by cdk destroy', () => {
    const table = only('AWS::DynamoDB::Table');
    assert.equal(table.Properties.DeletionProtectionEnabled, true);
    assert.equal(table.DeletionPolicy, 'Retain');
  });

  it('has the key schema of the shared table design: pk/sk strings', () => {
    const { Properties: p } = only('AWS::DynamoDB::Table');
    assert.deepEqual(p.KeySchema, [
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ]);
    assert.deepEqual(p.KeySchema, counterTableDefinition.KeySchema);
  });

  it('has the ranking indexes of the shared table design: period (S) with a numeric sort key, all attributes', () => {
    const { Properties: p } = only('AWS::DynamoDB::Table');
    assert.deepEqual(p.GlobalSecondaryIndexes, counterTableDefinition.GlobalSecondaryIndexes);
    for (const gsi of p.GlobalSecondaryIndexes as Array<{ KeySchema: Array<{ AttributeName: string; KeyType: string }> }>) {
      const [hash, range] = gsi.KeySchema;
      assert.equal(hash!.AttributeName, 'period');
      const rangeType = (p.AttributeDefinitions as Array<{ AttributeName: string; AttributeType: string }>).find(
        (a) => a.AttributeName === range!.AttributeName,
      )?.AttributeType;
      assert.equal(rangeType, 'N', range!.AttributeName);
    }
    assert.deepEqual(
      [...p.AttributeDefinitions].sort((a, b) => a.AttributeName.localeCompare(b.AttributeName)),
      [...counterTableDefinition.AttributeDefinitions].sort((a, b) => a.AttributeName.localeCompare(b.AttributeName)),
    );
  });
});

describe('UsageQueries workgroup', () => {
  it('runs Athena engine v3, enforces its configuration and publishes CloudWatch metrics', () => {
    const c = only('AWS::Athena::WorkGroup').Properties.WorkGroupConfiguration;
    assert.deepEqual(c.EngineVersion, { SelectedEngineVersion: 'Athena engine version 3' });
    assert.equal(c.EnforceWorkGroupConfiguration, true);
    assert.equal(c.PublishCloudWatchMetricsEnabled, true);
  });

  it('cancels a query that scans more than 10 GiB', () => {
    assert.equal(only('AWS::Athena::WorkGroup').Properties.WorkGroupConfiguration.BytesScannedCutoffPerQuery, 10 * 1024 ** 3);
  });

  it('writes encrypted results under results/ of its results bucket', () => {
    const resultsId = Object.keys(template.findResources('AWS::S3::Bucket')).find((id) => id.startsWith('QueriesResults'))!;
    assert.deepEqual(only('AWS::Athena::WorkGroup').Properties.WorkGroupConfiguration.ResultConfiguration, {
      EncryptionConfiguration: { EncryptionOption: 'SSE_S3' },
      OutputLocation: { 'Fn::Join': ['', ['s3://', { Ref: resultsId }, '/results/']] },
    });
  });

  it('expires result files after 7 days, in an encrypted, private, TLS-only bucket with access logs', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
      PublicAccessBlockConfiguration: Match.objectLike({ BlockPublicAcls: true, RestrictPublicBuckets: true }),
      LoggingConfiguration: Match.objectLike({ LogFilePrefix: 'query-results/' }),
      LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ Id: 'expire-results', ExpirationInDays: 7, Status: 'Enabled' })]) },
    });
  });

  it('takes the scan cutoff and result retention as props', () => {
    const stack = new Stack(testApp(), 'Props');
    new UsageQueries(stack, 'Queries', {
      accessLogsBucket: new s3.Bucket(stack, 'AccessLogs'),
      bytesScannedCutoffPerQuery: Size.gibibytes(1),
      resultsExpireAfter: Duration.days(2),
      workGroupName: 'usage',
    });
    const t = Template.fromStack(stack);
    t.hasResourceProperties('AWS::Athena::WorkGroup', {
      Name: 'usage',
      WorkGroupConfiguration: Match.objectLike({ BytesScannedCutoffPerQuery: 1024 ** 3 }),
    });
    t.hasResourceProperties('AWS::S3::Bucket', {
      LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ Id: 'expire-results', ExpirationInDays: 2 })]) },
    });
  });
});

describe('metrics admin key', () => {
  it('is generated at deploy time: 48 characters without punctuation in the JSON field "key"', () => {
    assert.deepEqual(only('AWS::SecretsManager::Secret').Properties.GenerateSecretString, {
      SecretStringTemplate: '{}',
      GenerateStringKey: 'key',
      ExcludePunctuation: true,
      PasswordLength: 48,
    });
  });

  it('refuses a query wait that API Gateway’s 29 s limit would cut off', () => {
    const stack = new Stack(testApp(), 'Props');
    const accessLogsBucket = new s3.Bucket(stack, 'AccessLogs');
    const deps = {
      counters: new UsageCounters(stack, 'Counters'),
      usageLog: new UsageLog(stack, 'UsageLog', { accessLogsBucket }),
      queries: new UsageQueries(stack, 'Queries', { accessLogsBucket }),
      adminKeySecret: new secretsmanager.Secret(stack, 'AdminKey'),
    };
    assert.throws(() => new MetricsFunction(stack, 'Metrics', { ...deps, queryWait: Duration.seconds(29) }), /29 s/);
  });
});

describe('stack outputs', () => {
  function outputJoin(name: string): unknown[] {
    return (template.findOutputs(name)[name] as { Value: { 'Fn::Join': [string, unknown[]] } }).Value['Fn::Join'][1];
  }

  it('gives the OpenAI SDK base URL, ending in /v1', () => {
    assert.equal(outputJoin('BaseUrl').at(-1), '/v1');
  });

  it('gives the metrics and dashboard URLs', () => {
    assert.equal(outputJoin('MetricsUrl').at(-1), '/metrics');
    assert.equal(outputJoin('DashboardUrl').at(-1), '/dashboard');
  });

  it('names the admin key secret, the log bucket, the counters table and the Athena workgroup', () => {
    const secretId = logicalIdOf(template, 'AWS::SecretsManager::Secret');
    assert.ok(JSON.stringify(template.findOutputs('AdminKeySecretName').AdminKeySecretName).includes(`"Ref":"${secretId}"`));
    const logBucketId = logicalIdOf(template, 'AWS::S3::Bucket', { VersioningConfiguration: { Status: 'Enabled' } });
    template.hasOutput('LogBucketName', { Value: { Ref: logBucketId } });
    template.hasOutput('EventsStreamName', { Value: { Ref: logicalIdOf(template, 'AWS::KinesisFirehose::DeliveryStream') } });
    template.hasOutput('CountersTableName', { Value: { Ref: logicalIdOf(template, 'AWS::DynamoDB::Table') } });
    template.hasOutput('AthenaWorkGroupName', { Value: only('AWS::Athena::WorkGroup').Properties.Name });
  });
});
