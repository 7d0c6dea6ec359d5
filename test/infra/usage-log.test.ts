import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { EVENTS_ERROR_PREFIX, EVENTS_OUTPUT_PREFIX, RECOVERY_PREFIX, UsageLog } from '../../lib/usage-log';
import { USAGE_EVENT_COLUMNS } from '../../lib/usage-event-schema';
import { logicalIdOf, synthGateway, testApp } from './synth-stack';

let template: Template;
let bucketId: string;
let keyId: string;
let accessLogsId: string;
let tableId: string;
let databaseId: string;

type Resource = { Properties: Record<string, any>; DeletionPolicy?: string; UpdateReplacePolicy?: string };

function resource(type: string, id: string): Resource {
  return template.findResources(type)[id] as Resource;
}

function deliveryStream(): Resource {
  const streams = Object.values(template.findResources('AWS::KinesisFirehose::DeliveryStream')) as Resource[];
  assert.equal(streams.length, 1);
  return streams[0]!;
}

function destination(): Record<string, any> {
  return deliveryStream().Properties.ExtendedS3DestinationConfiguration as Record<string, any>;
}

before(() => {
  ({ template } = synthGateway());
  keyId = logicalIdOf(template, 'AWS::KMS::Key');
  bucketId = logicalIdOf(template, 'AWS::S3::Bucket', { VersioningConfiguration: { Status: 'Enabled' } });
  accessLogsId = Object.keys(template.findResources('AWS::S3::Bucket')).find((id) => id.startsWith('AccessLogs'))!;
  tableId = logicalIdOf(template, 'AWS::Glue::Table');
  databaseId = logicalIdOf(template, 'AWS::Glue::Database');
});

describe('UsageLog event bucket', () => {
  it('is encrypted with a customer managed KMS key that rotates', () => {
    template.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
    assert.deepEqual(resource('AWS::S3::Bucket', bucketId).Properties.BucketEncryption, {
      ServerSideEncryptionConfiguration: [
        {
          BucketKeyEnabled: true,
          ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: { 'Fn::GetAtt': [keyId, 'Arn'] } },
        },
      ],
    });
  });

  it('blocks public access, is versioned and logs server access to the separate access log bucket', () => {
    const props = resource('AWS::S3::Bucket', bucketId).Properties;
    assert.deepEqual(props.PublicAccessBlockConfiguration, {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    assert.deepEqual(props.VersioningConfiguration, { Status: 'Enabled' });
    assert.deepEqual(props.LoggingConfiguration, {
      DestinationBucketName: { Ref: accessLogsId },
      LogFilePrefix: 'usage-log/',
    });
  });

  it('denies every request that does not use TLS', () => {
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: bucketId },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Action: 's3:*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  it('survives cdk destroy, and so does its key', () => {
    assert.equal(resource('AWS::S3::Bucket', bucketId).DeletionPolicy, 'Retain');
    assert.equal(resource('AWS::S3::Bucket', bucketId).UpdateReplacePolicy, 'Retain');
    assert.equal(resource('AWS::KMS::Key', keyId).DeletionPolicy, 'Retain');
  });

  it('aborts stale multipart uploads and expires overwritten versions, without archiving by default', () => {
    const rules = resource('AWS::S3::Bucket', bucketId).Properties.LifecycleConfiguration.Rules as Array<Record<string, any>>;
    assert.deepEqual(
      rules.map((r) => r.Id),
      ['abort-incomplete-uploads', 'expire-noncurrent-versions'],
    );
    assert.ok(rules.every((r) => r.Transitions === undefined));
  });
});

describe('UsageLog access log bucket', () => {
  it('uses SSE-S3, the only encryption S3 server access logging delivers to', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      LoggingConfiguration: Match.absent(),
      LifecycleConfiguration: { Rules: [Match.objectLike({ ExpirationInDays: 90 })] },
    });
  });
});

describe('UsageLog Firehose stream', () => {
  it('takes DirectPut records, encrypted at rest with an AWS owned key', () => {
    const props = deliveryStream().Properties;
    assert.equal(props.DeliveryStreamType, 'DirectPut');
    assert.deepEqual(props.DeliveryStreamEncryptionConfigurationInput, { KeyType: 'AWS_OWNED_CMK' });
  });

  it('delivers to the event bucket, SSE-KMS with the log key', () => {
    assert.deepEqual(destination().BucketARN, { 'Fn::GetAtt': [bucketId, 'Arn'] });
    assert.deepEqual(destination().EncryptionConfiguration, {
      KMSEncryptionConfig: { AWSKMSKeyARN: { 'Fn::GetAtt': [keyId, 'Arn'] } },
    });
  });

  it('converts JSON to Snappy Parquet with the Glue table’s schema, keeping key case', () => {
    const conversion = destination().DataFormatConversionConfiguration;
    assert.equal(conversion.Enabled, true);
    assert.deepEqual(conversion.InputFormatConfiguration, { Deserializer: { OpenXJsonSerDe: { CaseInsensitive: false } } });
    assert.deepEqual(conversion.OutputFormatConfiguration, { Serializer: { ParquetSerDe: { Compression: 'SNAPPY' } } });
    assert.deepEqual(conversion.SchemaConfiguration.DatabaseName, { Ref: databaseId });
    assert.deepEqual(conversion.SchemaConfiguration.TableName, { Ref: tableId });
    assert.equal(conversion.SchemaConfiguration.VersionId, 'LATEST');
    // Parquet compresses itself; Firehose must not compress the file again.
    assert.ok(destination().CompressionFormat === undefined || destination().CompressionFormat === 'UNCOMPRESSED');
  });

  it('partitions dynamically by the event’s own date, extracted with JQ from ts', () => {
    assert.deepEqual(destination().DynamicPartitioningConfiguration, { Enabled: true });
    assert.deepEqual(destination().ProcessingConfiguration, {
      Enabled: true,
      Processors: [
        {
          Type: 'MetadataExtraction',
          Parameters: [
            { ParameterName: 'MetadataExtractionQuery', ParameterValue: '{"dt":.ts[0:10]}' },
            { ParameterName: 'JsonParsingEngine', ParameterValue: 'JQ-1.6' },
          ],
        },
      ],
    });
    assert.equal(destination().Prefix, 'events/dt=!{partitionKeyFromQuery:dt}/');
    assert.equal(destination().Prefix, EVENTS_OUTPUT_PREFIX);
  });

  it('writes failed records under errors/, split by failure type and day', () => {
    assert.equal(destination().ErrorOutputPrefix, 'errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/');
    assert.equal(destination().ErrorOutputPrefix, EVENTS_ERROR_PREFIX);
  });

  it('buffers 128 MB or 300 s, within Firehose’s limits for conversion with dynamic partitioning', () => {
    const { SizeInMBs, IntervalInSeconds } = destination().BufferingHints;
    assert.deepEqual({ SizeInMBs, IntervalInSeconds }, { SizeInMBs: 128, IntervalInSeconds: 300 });
    assert.ok(SizeInMBs >= 64 && SizeInMBs <= 128);
    assert.ok(IntervalInSeconds >= 60 && IntervalInSeconds <= 900);
  });

  it('logs delivery errors to its own CloudWatch log group', () => {
    const logging = destination().CloudWatchLoggingOptions;
    assert.equal(logging.Enabled, true);
    const groupId = (logging.LogGroupName as { Ref: string }).Ref;
    assert.equal(resource('AWS::Logs::LogGroup', groupId).Properties.RetentionInDays, 30);
  });

  it('may write the bucket with the key and read the Glue table schema', () => {
    template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Action: Match.arrayWith(['s3:PutObject']), Resource: Match.arrayWith([{ 'Fn::GetAtt': [bucketId, 'Arn'] }]) }),
          Match.objectLike({ Action: Match.arrayWith(['kms:GenerateDataKey*']), Resource: { 'Fn::GetAtt': [keyId, 'Arn'] } }),
          Match.objectLike({ Action: ['glue:GetTable', 'glue:GetTableVersion', 'glue:GetTableVersions'] }),
        ]),
      },
    });
  });
});

describe('UsageLog Glue table', () => {
  function tableInput(): Record<string, any> {
    return resource('AWS::Glue::Table', tableId).Properties.TableInput as Record<string, any>;
  }

  it('lives in the usage log database', () => {
    assert.deepEqual(resource('AWS::Glue::Table', tableId).Properties.DatabaseName, { Ref: databaseId });
  });

  it('has exactly the usage event columns, partitioned by dt', () => {
    assert.deepEqual(
      tableInput().StorageDescriptor.Columns.map((c: { Name: string; Type: string }) => [c.Name, c.Type]),
      USAGE_EVENT_COLUMNS.map((c) => [c.name, c.type.inputString]),
    );
    assert.deepEqual(
      tableInput().PartitionKeys.map((c: { Name: string; Type: string }) => [c.Name, c.Type]),
      [['dt', 'string']],
    );
  });

  it('reads Parquet under s3://<event bucket>/events/', () => {
    const sd = tableInput().StorageDescriptor;
    assert.deepEqual(sd.Location, { 'Fn::Join': ['', ['s3://', { Ref: bucketId }, '/events/']] });
    assert.equal(sd.InputFormat, 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat');
    assert.equal(sd.OutputFormat, 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat');
    assert.equal(sd.SerdeInfo.SerializationLibrary, 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe');
    assert.equal(tableInput().TableType, 'EXTERNAL_TABLE');
  });

  it('projects daily dt partitions from 2024-01-01 to now', () => {
    const p = tableInput().Parameters;
    assert.equal(p['projection.enabled'], 'true');
    assert.equal(p['projection.dt.type'], 'date');
    assert.equal(p['projection.dt.format'], 'yyyy-MM-dd');
    assert.equal(p['projection.dt.range'], '2024-01-01,NOW');
    assert.equal(p['projection.dt.interval'], '1');
    assert.equal(p['projection.dt.interval.unit'], 'DAYS');
    assert.equal(p.classification, 'parquet');
  });

  it('locates each projected partition where Firehose writes that day', () => {
    const locationTemplate = tableInput().Parameters['storage.location.template'];
    assert.deepEqual(locationTemplate, { 'Fn::Join': ['', ['s3://', { Ref: bucketId }, '/events/dt=${dt}/']] });
    const day = '2026-11-22';
    const athenaPath = (locationTemplate['Fn::Join'][1][2] as string).replace('${dt}', day);
    const firehosePath = `/${EVENTS_OUTPUT_PREFIX.replace('!{partitionKeyFromQuery:dt}', day)}`;
    assert.equal(athenaPath, firehosePath);
  });

  it('keeps the recovery prefix outside the table location', () => {
    assert.ok(!RECOVERY_PREFIX.startsWith('events/'));
  });
});

describe('UsageLog props', () => {
  function synthUsageLog(props: Partial<ConstructorParameters<typeof UsageLog>[2]>): Template {
    const stack = new Stack(testApp(), 'Props');
    const accessLogsBucket = new s3.Bucket(stack, 'AccessLogs');
    new UsageLog(stack, 'UsageLog', { accessLogsBucket, ...props });
    return Template.fromStack(stack);
  }

  it('moves event files to the archive storage class after the given age', () => {
    const t = synthUsageLog({ archive: { storageClass: s3.StorageClass.INTELLIGENT_TIERING, after: Duration.days(30) } });
    t.hasResourceProperties('AWS::S3::Bucket', {
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({
            Id: 'archive-events',
            Prefix: 'events/',
            Transitions: [{ StorageClass: 'INTELLIGENT_TIERING', TransitionInDays: 30 }],
          }),
        ]),
      },
    });
  });

  it('takes a removal policy and a buffering interval', () => {
    const t = synthUsageLog({ removalPolicy: RemovalPolicy.DESTROY, bufferingInterval: Duration.seconds(900) });
    t.hasResource('AWS::S3::Bucket', { Properties: Match.objectLike({ VersioningConfiguration: { Status: 'Enabled' } }), DeletionPolicy: 'Delete' });
    t.hasResourceProperties('AWS::KinesisFirehose::DeliveryStream', {
      ExtendedS3DestinationConfiguration: Match.objectLike({ BufferingHints: { IntervalInSeconds: 900, SizeInMBs: 128 } }),
    });
  });
});
