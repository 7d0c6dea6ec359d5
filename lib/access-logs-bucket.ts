import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

export interface AccessLogsBucketProps {
  /**
   * How long server access log records are kept.
   * @default Duration.days(90)
   */
  readonly expireAfter?: Duration;
  /**
   * What happens to the bucket when it leaves the stack.
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
}

/**
 * The target bucket of S3 server access logs for the event log and the query results buckets.
 *
 * S3 delivers server access logs only to buckets encrypted with SSE-S3, so this bucket cannot share the event
 * log's KMS key.
 *
 * @example
 * const accessLogs = new AccessLogsBucket(this, 'AccessLogs');
 * new s3.Bucket(this, 'Data', { serverAccessLogsBucket: accessLogs.bucket, serverAccessLogsPrefix: 'data/' });
 */
export class AccessLogsBucket extends Construct {
  readonly bucket: s3.Bucket;

  constructor(scope: Construct, id: string, props: AccessLogsBucketProps = {}) {
    super(scope, id);
    this.bucket = new s3.Bucket(this, 'Bucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      lifecycleRules: [{ id: 'expire-access-logs', expiration: props.expireAfter ?? Duration.days(90) }],
      removalPolicy: props.removalPolicy ?? RemovalPolicy.RETAIN,
    });
    Validations.of(this.bucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'This bucket is the server access log target; logging its own accesses into itself would loop.',
    });
  }
}
