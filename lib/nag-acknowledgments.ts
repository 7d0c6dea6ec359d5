/**
 * cdk-nag (AWS Solutions rules) acknowledgments for the IAM wildcards that `grant*` helpers produce.
 *
 * cdk-nag v3 reads acknowledgments recorded with `Validations.of(construct).acknowledge()` on the flagged resource
 * or any of its ancestors, one finding at a time (`AwsSolutions-IAM5[<finding>]`). The grant helpers record their
 * own findings on the grantee, with the reason next to the grant that causes them.
 */
import { CfnElement, Stack, Validations } from 'aws-cdk-lib';
import type * as iam from 'aws-cdk-lib/aws-iam';
import { Construct, type IConstruct } from 'constructs';

/**
 * The cdk-nag finding of a wildcard under a resource's ARN, e.g. `Resource::<UsageLogBucket24F6AEC5.Arn>/recovery/*`.
 * `resource` is an L2 construct (its default child is used) or an L1 resource.
 */
export function arnWildcardFinding(resource: IConstruct, suffix: string): string {
  const element = CfnElement.isCfnElement(resource) ? resource : resource.node.defaultChild;
  if (!CfnElement.isCfnElement(element)) throw new Error(`${resource.node.path} has no CloudFormation resource`);
  return `Resource::<${Stack.of(element).getLogicalId(element)}.Arn>${suffix}`;
}

/**
 * Records on `grantee`'s principal that the IAM5 findings `findings` (e.g. `Action::s3:GetObject*`) are deliberate.
 * A principal that is not a construct of this app (an imported role) is left alone: its policies are not checked.
 */
export function acknowledgeGrantWildcards(grantee: iam.IGrantable, findings: readonly string[], reason: string): void {
  const principal: unknown = grantee.grantPrincipal;
  if (!Construct.isConstruct(principal)) return;
  acknowledgeWildcards(principal, findings, reason);
}

/** Records on `scope` that the IAM5 findings `findings` are deliberate. */
export function acknowledgeWildcards(scope: IConstruct, findings: readonly string[], reason: string): void {
  for (const finding of findings) Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[${finding}]`, reason });
}

/** Action families `Bucket.grantRead` produces. */
export const S3_READ_ACTION_FINDINGS = ['Action::s3:GetBucket*', 'Action::s3:GetObject*', 'Action::s3:List*'] as const;
/** Action families `Bucket.grantPut` produces. */
export const S3_PUT_ACTION_FINDINGS = ['Action::s3:Abort*'] as const;
/** Action families `Bucket.grantReadWrite` produces. */
export const S3_READ_WRITE_ACTION_FINDINGS = [...S3_READ_ACTION_FINDINGS, ...S3_PUT_ACTION_FINDINGS, 'Action::s3:DeleteObject*'] as const;
/** Action families a KMS encrypt grant produces. */
export const KMS_ENCRYPT_ACTION_FINDINGS = ['Action::kms:GenerateDataKey*', 'Action::kms:ReEncrypt*'] as const;
