import { Duration, RemovalPolicy, Size, Stack, Validations } from 'aws-cdk-lib';
import * as glue from 'aws-cdk-lib/aws-glue';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as firehose from 'aws-cdk-lib/aws-kinesisfirehose';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import {
  acknowledgeGrantWildcards,
  acknowledgeWildcards,
  arnWildcardFinding,
  KMS_ENCRYPT_ACTION_FINDINGS,
  S3_PUT_ACTION_FINDINGS,
  S3_READ_ACTION_FINDINGS,
  S3_READ_WRITE_ACTION_FINDINGS,
} from './nag-acknowledgments';
import {
  USAGE_EVENT_COLUMNS,
  USAGE_EVENT_FIRST_DATE,
  USAGE_EVENT_PARTITION_COLUMN,
  USAGE_EVENT_PARTITION_KEYS,
  USAGE_EVENT_PREFIX,
} from './usage-event-schema';

/** Key prefix where the proxy parks events that Firehose refused, for a later replay. Outside the table's location. */
export const RECOVERY_PREFIX = 'recovery/';

/** Firehose output prefix: one folder per UTC event date, taken from the event's own `ts` (not arrival time). */
export const EVENTS_OUTPUT_PREFIX = `${USAGE_EVENT_PREFIX}${USAGE_EVENT_PARTITION_COLUMN}=!{partitionKeyFromQuery:${USAGE_EVENT_PARTITION_COLUMN}}/`;

/** Firehose prefix for records it could not partition or convert, split by failure type. */
export const EVENTS_ERROR_PREFIX = 'errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/';

/** Moves older event files to a cheaper storage class. */
export interface UsageLogArchive {
  /** Target storage class, e.g. `s3.StorageClass.INTELLIGENT_TIERING` or `s3.StorageClass.GLACIER_INSTANT_RETRIEVAL`. */
  readonly storageClass: s3.StorageClass;
  /** Age of an object at which it moves. */
  readonly after: Duration;
}

export interface UsageLogProps {
  /**
   * Bucket that receives the event bucket's S3 server access logs.
   */
  readonly accessLogsBucket: s3.IBucket;
  /**
   * Move event files to a cheaper storage class after a while. Athena still reads Intelligent-Tiering and
   * Glacier Instant Retrieval objects; do not pick Glacier Flexible Retrieval or Deep Archive, Athena skips those.
   * Objects under 128 KB are never tiered by Intelligent-Tiering, so it pays off only with large daily volumes.
   * @default - no transition: files stay in S3 Standard
   */
  readonly archive?: UsageLogArchive;
  /**
   * What happens to the event bucket and its key when they leave the stack. The log is the unit of truth that
   * counters and history are rebuilt from, so by default `cdk destroy` keeps it.
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * How long Firehose buffers events before writing a Parquet file. Longer means fewer, larger files (cheaper
   * Athena scans) but history that lags further behind; live totals come from the counters table, not from here.
   * Firehose allows 60–900 s with dynamic partitioning.
   * @default Duration.seconds(300)
   */
  readonly bufferingInterval?: Duration;
  /**
   * Buffer size that also triggers a write. Firehose requires 64–128 MiB with format conversion.
   * @default Size.mebibytes(128)
   */
  readonly bufferingSize?: Size;
  /**
   * Retention of the Firehose delivery error log.
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly deliveryLogRetention?: logs.RetentionDays;
}

/**
 * The usage event log: a KMS-encrypted, versioned S3 bucket, a Firehose stream that turns JSON events into
 * Parquet files partitioned by event date, and the Glue table Athena queries them through.
 *
 * @example
 * const usageLog = new UsageLog(this, 'UsageLog', { accessLogsBucket });
 * usageLog.grantPutEvents(proxyFunction);
 * usageLog.grantReadEvents(metricsFunction);
 */
export class UsageLog extends Construct {
  /** Key that encrypts the event bucket (rotated yearly). */
  readonly key: kms.Key;
  readonly bucket: s3.Bucket;
  readonly database: glue.Database;
  readonly table: glue.S3Table;
  readonly deliveryStream: firehose.DeliveryStream;
  readonly deliveryLogGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: UsageLogProps) {
    super(scope, id);
    const removalPolicy = props.removalPolicy ?? RemovalPolicy.RETAIN;

    this.key = new kms.Key(this, 'Key', {
      description: 'Encrypts the LLM usage event log',
      enableKeyRotation: true,
      removalPolicy,
    });

    this.bucket = new s3.Bucket(this, 'Bucket', {
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: this.key,
      // One data key per bucket instead of one KMS call per object: Firehose and Athena touch many objects.
      bucketKeyEnabled: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      versioned: true,
      serverAccessLogsBucket: props.accessLogsBucket,
      serverAccessLogsPrefix: 'usage-log/',
      lifecycleRules: [
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(7) },
        // Firehose never overwrites; old versions only appear when someone deletes or rewrites files by hand.
        { id: 'expire-noncurrent-versions', noncurrentVersionExpiration: Duration.days(30) },
        ...(props.archive
          ? [
              {
                id: 'archive-events',
                prefix: USAGE_EVENT_PREFIX,
                transitions: [{ storageClass: props.archive.storageClass, transitionAfter: props.archive.after }],
              },
            ]
          : []),
      ],
      removalPolicy,
    });

    this.database = new glue.Database(this, 'Database', {
      description: 'LLM usage gateway: per-request usage events',
    });

    const bucketName = this.bucket.bucketName;
    this.table = new glue.S3Table(this, 'Events', {
      database: this.database,
      description: 'One row per proxied LLM request (UsageEvent), Parquet, partitioned by UTC event date',
      columns: [...USAGE_EVENT_COLUMNS],
      partitionKeys: [...USAGE_EVENT_PARTITION_KEYS],
      dataFormat: glue.DataFormat.PARQUET,
      storage: glue.S3TableStorage.fromBucket(this.bucket),
      s3Prefix: USAGE_EVENT_PREFIX,
      // The data is SSE-KMS on the bucket; Athena decrypts that transparently. `true` means client-side encryption.
      hasEncryptedData: false,
      // Partition projection: Athena computes the `dt` partitions from the date range instead of a crawler or
      // MSCK REPAIR, so a new day is queryable the moment Firehose writes its first file.
      partitionProjection: {
        [USAGE_EVENT_PARTITION_COLUMN]: glue.PartitionProjectionConfiguration.date({
          min: USAGE_EVENT_FIRST_DATE,
          max: 'NOW',
          format: 'yyyy-MM-dd',
          step: { interval: 1, intervalUnit: glue.DateIntervalUnit.DAYS },
        }),
      },
      parameters: {
        'storage.location.template': `s3://${bucketName}/${USAGE_EVENT_PREFIX}${USAGE_EVENT_PARTITION_COLUMN}=\${${USAGE_EVENT_PARTITION_COLUMN}}/`,
      },
    });

    this.deliveryLogGroup = new logs.LogGroup(this, 'DeliveryLogs', {
      retention: props.deliveryLogRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    const destination = new firehose.S3Bucket(this.bucket, {
      dataOutputPrefix: EVENTS_OUTPUT_PREFIX,
      errorOutputPrefix: EVENTS_ERROR_PREFIX,
      bufferingInterval: props.bufferingInterval ?? Duration.seconds(300),
      bufferingSize: props.bufferingSize ?? Size.mebibytes(128),
      encryptionKey: this.key,
      loggingConfig: new firehose.EnableLogging(this.deliveryLogGroup),
      // Partition by the event's own timestamp, so a late or replayed event lands in the day it happened.
      processors: [firehose.MetadataExtractionProcessor.jq16({ [USAGE_EVENT_PARTITION_COLUMN]: '.ts[0:10]' })],
      dynamicPartitioning: { enabled: true },
      dataFormatConversion: {
        schemaConfiguration: firehose.SchemaConfiguration.fromCfnTable(this.table.node.defaultChild as glue.CfnTable),
        // Column names are already lower snake case; lowercasing keys would also fold the user's property names
        // inside the `properties` map.
        inputFormat: new firehose.OpenXJsonInputFormat({ lowercaseColumnNames: false }),
        outputFormat: new firehose.ParquetOutputFormat({ compression: firehose.ParquetCompression.SNAPPY }),
      },
    });

    this.deliveryStream = new firehose.DeliveryStream(this, 'Stream', {
      destination,
      encryption: firehose.StreamEncryption.awsOwnedKey(),
    });
    acknowledgeWildcards(
      this.deliveryStream,
      [...S3_READ_WRITE_ACTION_FINDINGS, ...KMS_ENCRYPT_ACTION_FINDINGS, arnWildcardFinding(this.bucket, '/*')],
      'The Firehose S3 destination role gets Bucket.grantReadWrite and encrypt/decrypt on the event log bucket and its key only; Firehose writes objects under generated keys across events/ and errors/.',
    );
    // The Firehose L2 adds a stack-level mapping of its service CIDR blocks, used only by Redshift/Splunk/HTTP
    // destinations; CloudFormation's linter flags it as unused.
    Validations.of(Stack.of(this)).acknowledge({
      id: 'CloudFormation-Validate::W7001',
      reason: 'The Firehose CIDR block mapping is added by the DeliveryStream construct and is unused with an S3 destination.',
    });
    acknowledgeWildcards(
      this.deliveryStream,
      ['Resource::*'],
      'glue:GetSchemaVersion on * is added by the Firehose record format conversion; it reads schema metadata only, and the Glue table itself is granted by ARN.',
    );
  }

  /** Lets `grantee` send events to the Firehose stream (`PutRecord`, `PutRecordBatch`). */
  grantPutEvents(grantee: iam.IGrantable): iam.Grant {
    return this.deliveryStream.grantPutRecords(grantee);
  }

  /** Lets `grantee` park refused events under {@link RECOVERY_PREFIX} (write only, including the KMS key). */
  grantWriteRecovery(grantee: iam.IGrantable): iam.Grant {
    const grant = this.bucket.grantPut(grantee, `${RECOVERY_PREFIX}*`);
    acknowledgeGrantWildcards(
      grantee,
      [...S3_PUT_ACTION_FINDINGS, ...KMS_ENCRYPT_ACTION_FINDINGS, arnWildcardFinding(this.bucket, `/${RECOVERY_PREFIX}*`)],
      'Put-only access to the recovery/ prefix of the event log bucket (one object per refused event, generated keys) and encryption with its key only.',
    );
    return grant;
  }

  /**
   * Lets `grantee` query the events through Athena: the Glue catalog entries of the table (Glue checks the
   * catalog, the database and the table ARN), and read access to the event files and their KMS key.
   */
  grantReadEvents(grantee: iam.IGrantable): iam.Grant {
    const catalogArn = Stack.of(this).formatArn({ service: 'glue', resource: 'catalog' });
    const grant = iam.Grant.addToPrincipal({
      grantee,
      actions: ['glue:GetDatabase', 'glue:GetTable', 'glue:GetPartition', 'glue:GetPartitions'],
      resourceArns: [catalogArn, this.database.databaseArn, this.table.tableArn],
    });
    this.bucket.grantRead(grantee, `${USAGE_EVENT_PREFIX}*`);
    acknowledgeGrantWildcards(
      grantee,
      [...S3_READ_ACTION_FINDINGS, arnWildcardFinding(this.bucket, `/${USAGE_EVENT_PREFIX}*`)],
      'Read-only access to the Parquet files under events/ of the event log bucket, which Athena scans; file names are generated by Firehose.',
    );
    return grant;
  }
}
